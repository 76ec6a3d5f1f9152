"""Guest operations, one recipe of system calls per module, each declared with
`cloudvmi.capability.operation` and served as `vm.guest.NAME(...)`."""
