"""Bridges to other tools: they read guests through CloudVMI (any VM `attach` takes, local,
dumped or on another node) and use the kernel profile CloudVMI builds from guest memory."""
