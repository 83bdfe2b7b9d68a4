//! NVML backend (real NVIDIA GPUs): not written yet.
