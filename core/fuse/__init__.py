"""The FUSE wire layer: kernel ABI, request decoding, reply encoding, INIT negotiation, routing.

Nothing in this package performs I/O: it turns bytes from guest memory into typed calls and typed
results back into bytes.  The data of READ and WRITE is never copied here; plugins receive views
of guest memory.
"""
