"""pix2pix-zero algorithms in plain torch. Nothing here imports ComfyUI, so it can be tested and reused alone."""
from .inversion import check_latent, invert_flow_latent, invert_latent, predict_noise
from .regularization import auto_corr_loss, draw_shifts, kl_divergence, pyramid_sizes, regularize_noise
from .schedule import SCHEDULES, InversionSchedule, inversion_schedule, restore_schedule, sigmas_from_alphas_cumprod

__all__ = [
    "SCHEDULES",
    "InversionSchedule",
    "auto_corr_loss",
    "check_latent",
    "draw_shifts",
    "invert_flow_latent",
    "invert_latent",
    "inversion_schedule",
    "kl_divergence",
    "predict_noise",
    "pyramid_sizes",
    "regularize_noise",
    "restore_schedule",
    "sigmas_from_alphas_cumprod",
]
