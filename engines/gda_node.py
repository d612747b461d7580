"""The guided deformable attention node as the exported graphs hold it: written once here, read by the
exporter (which emits it), the graph splitter (which cuts around it) and every runtime that serves it."""

DOMAIN = "rvrt"
OP_TYPE = "GuidedDeformAttention"
DOMAIN_VERSION = 1
ATTRIBUTES = ("kernel_h", "kernel_w", "padding", "heads", "groups", "clip")
