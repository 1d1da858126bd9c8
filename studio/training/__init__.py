"""DreamBooth-LoRA training: a LoRA on the UNet attention of an SDXL or SD1.5 model, trained from
a few photos of one subject, with atomic checkpoints and exact resume. No UI here; see
`lora_train.train`."""
