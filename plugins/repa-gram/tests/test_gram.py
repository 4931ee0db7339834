import torch

from repa.plugins import load_components


def test_gram_is_registered_by_its_distribution():
    entry = load_components().get("alignment_loss", "gram")
    assert entry.distribution == "repa-gram"


def test_gram_loss_matches_its_definition_and_is_rotation_invariant():
    loss = load_components().get("alignment_loss", "gram").build()
    g = torch.Generator().manual_seed(0)
    p, y = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 3, generator=g)
    expected = []
    for b in range(2):
        cp = torch.nn.functional.cosine_similarity(p[b][:, None], p[b][None], dim=-1)
        cy = torch.nn.functional.cosine_similarity(y[b][:, None], y[b][None], dim=-1)
        expected.append(((cp - cy) ** 2).mean())
    torch.testing.assert_close(loss(p, y), torch.stack(expected))
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    torch.testing.assert_close(loss(p @ rotation, y), loss(p, y), atol=1e-6, rtol=0)
    assert loss(y, y).abs().max() < 1e-6  # the projector need not match the target's width
