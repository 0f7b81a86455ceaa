"""OpenSSF model signing, streamed: ``model.sig`` made from the digests the transfer computed (``job.signing.epilogue``)."""
