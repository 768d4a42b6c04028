// An invalid IDL file: every diagnostic, rendered with FILE:LINE:COL and the
// source line, becomes the compiler's error at the macro call.
shm_channel::include_idl!("tests/ui/idl/typo.idl");

fn main() {}
