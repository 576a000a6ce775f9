"""The repository paths of the configs in vfusion_jax/configs (see there)."""
