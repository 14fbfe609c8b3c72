"""Deepgram live streaming recognition (`deepgram`): a pure protocol module and a session module."""
