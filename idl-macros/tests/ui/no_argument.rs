// No argument, and two arguments.
mod a {
    shm_channel::include_idl!();
}
mod b {
    shm_channel::include_idl!("tests/ui/idl/counter.idl", "tests/ui/idl/shapes.idl");
}

fn main() {}
