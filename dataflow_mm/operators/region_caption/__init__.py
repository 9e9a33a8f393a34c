"""The region-caption family: boxes drawn and prompted, the VLM asked, answers split and checked per region."""
