"""Model presets and sizing (`mlx_qat.models.sizing`)."""

from .presets import model_config_dict, model_from_config, preset_config, preset_for_params

__all__ = ["model_config_dict", "model_from_config", "preset_config", "preset_for_params"]
