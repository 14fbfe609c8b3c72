"""Volcengine (ByteDance / Doubao) speech: binary frame codec and the big-model streaming ASR."""
