"""Safe fetching and decoding of client media: policy.py (the [media] limits), errors.py
(MediaError), fetch.py (http(s) URLs, SSRF-guarded), data_url.py, image.py (Pillow),
audio.py (PyAV), resolve.py (content parts -> decoded media)."""
