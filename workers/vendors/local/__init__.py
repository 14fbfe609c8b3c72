"""The offline `local` engine: pocketsphinx for recognition (espeak-ng for speech)."""
