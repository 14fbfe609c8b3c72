"""Alibaba DashScope (Model Studio): Paraformer real-time speech recognition."""
