"""Prediction targets: what the network regresses (velocity, noise or clean data)."""

from repa.plugins import hookimpl


def _build(cls_name):
    def factory(params):
        from repa.components.prediction import targets

        return getattr(targets, cls_name)()

    return factory


@hookimpl
def repa_register_predictions(registry):
    registry.add("v", _build("VelocityPrediction"), description="velocity d_alpha x0 + d_sigma eps (REPA default)")
    registry.add("eps", _build("NoisePrediction"), description="the noise eps")
    registry.add("x0", _build("DataPrediction"), description="the clean data x0")
