"""Training at scale: the FSDP2 QAT trainer (`fsdp_qat`) and the training memory model (`memory_model`)."""
