"""The engine: training, generation, evaluation, ablations. Knows components only through
`repa.interfaces`."""
