// The argument must be a string literal.
shm_channel::include_idl!(idl / display.idl);

fn main() {}
