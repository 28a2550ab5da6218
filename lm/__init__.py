"""lm: pretrain GPT-2-scale language models with PyTorch Lightning."""
