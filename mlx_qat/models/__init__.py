"""Model presets and sizing (`mlx_qat.models.sizing`)."""
