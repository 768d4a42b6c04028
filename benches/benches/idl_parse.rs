//! Parse-and-check time of a large IDL file (issue 4's benchmark).
//!
//! The file is generated in memory so that the bench needs no fixture: about
//! 5,000 lines shaped like a real service's interface — consts used as
//! bounds, plain-data structs that nest earlier structs, C-like and payload
//! enums, and a few protocols with dozens of documented, attributed methods
//! and events. Every name is unique and every reference points backwards, so
//! the file checks clean and the whole pipeline (grammar, AST, imports,
//! semantic rules, sizes) is measured, not an early error exit.
//!
//! Run: `cargo bench -p benches --bench idl_parse`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Scalar field types, cycled through so that every size path is taken.
const SCALARS: [&str; 11] = [
    "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bool",
];

/// Integer consts, used as bounds.
const CONSTS: usize = 60;
/// Enums, half C-like, half with payloads.
const ENUMS: usize = 90;
/// Structs of eight fields each.
const STRUCTS: usize = 150;
/// Protocols.
const PROTOCOLS: usize = 4;
/// Methods and events per protocol.
const METHODS: usize = 110;

/// Builds the benchmark's IDL source (about 5,000 lines).
fn generate() -> String {
    let mut s = String::with_capacity(256 * 1024);
    // `write!` into a `String` cannot fail; the results are ignored with `let _`.
    let _ = writeln!(s, "// Generated for the idl_parse benchmark.\n");

    for i in 0..CONSTS {
        let _ = writeln!(s, "/// Bound number {i}.");
        let unit = match i % 3 {
            0 => String::new(),
            1 => " B".to_owned(),
            _ => " KiB".to_owned(),
        };
        let _ = writeln!(s, "const LIMIT_{i}: u32 = {}{unit};", 16 + i);
    }
    let _ = writeln!(s);

    for e in 0..ENUMS {
        let _ = writeln!(s, "/// Enumeration {e}.");
        let _ = writeln!(s, "enum Kind{e} {{");
        for v in 0..6 {
            if e % 2 == 0 {
                // C-like, with an explicit discriminant now and then.
                if v == 3 {
                    let _ = writeln!(s, "    Variant{v} = {},", 10 + v);
                } else {
                    let _ = writeln!(s, "    Variant{v},");
                }
            } else if v % 2 == 0 {
                let _ = writeln!(s, "    Variant{v}({}),", SCALARS[(e + v) % SCALARS.len()]);
            } else {
                let _ = writeln!(s, "    Variant{v}(string<LIMIT_{}>),", (e + v) % CONSTS);
            }
        }
        let _ = writeln!(s, "}}\n");
    }

    for t in 0..STRUCTS {
        let _ = writeln!(
            s,
            "/// Record {t}: a plausible mix of scalars, bounded data and nesting."
        );
        let _ = writeln!(s, "struct Record{t} {{");
        for f in 0..8 {
            let ty = match (t + f) % 8 {
                0..=2 => SCALARS[(t * 3 + f) % SCALARS.len()].to_owned(),
                3 => format!("string<LIMIT_{}>", (t + f) % CONSTS),
                4 => format!("bytes<{} KiB>", 1 + f),
                5 => format!("Kind{}", (t + f) % ENUMS),
                6 if t > 0 => format!("option<Record{}>", t - 1 - (f % t.min(4))),
                6 => "option<u64>".to_owned(),
                _ => format!("[{}; {}]", SCALARS[f % SCALARS.len()], 4 + f),
            };
            let _ = writeln!(s, "    /// Field {f}.");
            let _ = writeln!(s, "    field_{f}: {ty},");
        }
        let _ = writeln!(s, "}}\n");
    }

    for p in 0..PROTOCOLS {
        let _ = writeln!(s, "/// Service number {p}.");
        let _ = writeln!(s, "@version({})", p + 1);
        let _ = writeln!(s, "protocol Service{p} {{");
        for m in 0..METHODS {
            let a = (p * METHODS + m) % STRUCTS;
            let b = (p + m) % ENUMS;
            let _ = writeln!(s, "    /// Method {m} of service {p}.");
            match m % 5 {
                0 => {
                    let _ = writeln!(
                        s,
                        "    fn call_{m}(input: Record{a}, mode: Kind{b}) -> result<Record{}, Kind{}>;",
                        (a + 1) % STRUCTS,
                        (b + 1) % ENUMS
                    );
                }
                1 => {
                    let _ = writeln!(s, "    @timeout(250)");
                    let _ = writeln!(
                        s,
                        "    fn query_{m}(id: u64, filter: option<string<LIMIT_{}>>) -> vec<u32, 64>;",
                        m % CONSTS
                    );
                }
                2 => {
                    let _ = writeln!(s, "    @queue({})", 1 + m % 8);
                    let _ = writeln!(s, "    fn push_{m}(item: Record{a}, data: bytes<64 KiB>);");
                }
                3 => {
                    let _ = writeln!(s, "    @sync");
                    let _ = writeln!(s, "    fn commit_{m}(ids: vec<u64, 128>, flag: bool);");
                }
                _ => {
                    let _ = writeln!(s, "    @queue({})", 4 + m % 16);
                    let _ = writeln!(s, "    event changed_{m}(what: Record{a}, why: Kind{b});");
                }
            }
        }
        let _ = writeln!(s, "}}\n");
    }
    s
}

fn bench_parse(c: &mut Criterion) {
    let source = generate();
    let path = Path::new("generated.idl");
    // Fail loudly, before measuring, if the generated file stops checking
    // clean: timing an early error exit would report a meaningless number.
    let loader = idl_parser::MemLoader::new();
    let model = match idl_parser::check_source(path, &source, &loader) {
        Ok(checked) => checked.model,
        Err(diagnostics) => {
            panic!(
                "the generated IDL does not check clean:\n{}",
                diagnostics.render(false)
            )
        }
    };
    assert_eq!(model.protocols.len(), PROTOCOLS);
    assert_eq!(model.types.len(), STRUCTS + ENUMS);
    assert_eq!(model.consts.len(), CONSTS);
    let lines = source.lines().count();
    let mut group = c.benchmark_group("idl_parse");
    group.throughput(Throughput::Bytes(source.len() as u64));
    group.bench_function(format!("check_source/{lines}_lines"), |b| {
        b.iter(|| idl_parser::check_source(black_box(path), black_box(&source), &loader))
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
