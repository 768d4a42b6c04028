// A valid IDL file expands into types, consts and a protocol module that
// ordinary code uses.
shm_channel::include_idl!("tests/ui/idl/counter.idl");

fn main() {
    let at = Point { x: 3, y: -4 };
    assert_eq!(at, Point { x: 3, y: -4 });
    let error = CounterError::Locked(7);
    assert_ne!(error, CounterError::Overflow);
    assert_eq!(MAX_LABEL, 64);
    assert_eq!(counter::NAME, "Counter");
    assert_eq!(counter::VERSION, 1);
    assert_eq!(counter::ADD.name, "add");
    assert!(counter::CLIENT_TO_SERVER_MAX >= 4096);
}
