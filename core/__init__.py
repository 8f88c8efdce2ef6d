"""pix2pix-zero algorithms in plain torch. Nothing here imports ComfyUI, so it can be tested and reused alone.

The names below are loaded on first use (PEP 562), so that a standard-library-only module such as ``core.net`` can
be imported by a command in milliseconds, before torch.
"""
import importlib

_EXPORTS = {
    "check_latent": ".inversion", "invert_flow_latent": ".inversion", "invert_latent": ".inversion",
    "predict_noise": ".inversion",
    "auto_corr_grad": ".regularization", "auto_corr_loss": ".regularization", "draw_shifts": ".regularization",
    "kl_divergence": ".regularization", "kl_grad": ".regularization", "pyramid_sizes": ".regularization",
    "regularize_noise": ".regularization",
    "SCHEDULES": ".schedule", "InversionSchedule": ".schedule", "inversion_schedule": ".schedule",
    "restore_schedule": ".schedule", "sigmas_from_alphas_cumprod": ".schedule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
