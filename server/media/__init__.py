"""Safe decoding of client media (audio now; images and URL fetching with multimodal chat)."""
