"""Radial vs dense quality: metrics (PSNR / SSIM of decoded videos, attention recall); the report comes next."""
