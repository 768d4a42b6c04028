// A path that names no file.
shm_channel::include_idl!("tests/ui/idl/no_such_file.idl");

fn main() {}
