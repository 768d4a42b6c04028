// The fault is in a file that the named one imports: the error names it.
shm_channel::include_idl!("tests/ui/idl/bad_import.idl");

fn main() {}
