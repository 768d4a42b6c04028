//! The checker's public face: the IDL.md example, message ids, attributes,
//! doc comments, imports, and reporting every error at once.

use std::path::Path;

use idl_parser::model::{ConstValue, Delivery, Kind, Type, TypeDef};
use idl_parser::{Code, Diagnostics, MemLoader, check_file, check_source};

fn check(src: &str) -> idl_parser::Checked {
    match check_source(Path::new("t.idl"), src, &MemLoader::new()) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(false)),
    }
}

fn errors(src: &str) -> Diagnostics {
    match check_source(Path::new("t.idl"), src, &MemLoader::new()) {
        Ok(_) => panic!("should fail:\n{src}"),
        Err(e) => e,
    }
}

#[test]
fn idl_md_example_checks_clean() {
    let checked = match check_file(Path::new("tests/corpus/valid/display.idl")) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(false)),
    };
    assert_eq!(
        checked.files,
        vec![
            Path::new("tests/corpus/valid/display.idl"),
            Path::new("tests/corpus/valid/geometry.idl")
        ]
    );
    let m = &checked.model;
    let names: Vec<&str> = m.types.iter().map(TypeDef::name).collect();
    // Imports first.
    assert_eq!(names, ["Point", "Rect", "PixelFormat", "DisplayError"]);
    let p = &m.protocols[0];
    assert_eq!(
        (p.name.as_str(), p.version, p.buffer),
        ("Display", 2, Some(4 << 20))
    );
    let ids: Vec<(&str, u32)> = p
        .methods
        .iter()
        .map(|x| (x.name.as_str(), x.id))
        .chain(p.events.iter().map(|e| (e.name.as_str(), e.id)))
        .collect();
    assert_eq!(
        ids,
        [
            ("create_surface", 0),
            ("resize", 1),
            ("blit", 2),
            ("commit", 3),
            ("cursor_moved", 4),
            ("set_gamma", 5),
            ("vsync", 6),
            ("surface_lost", 7)
        ]
    );
    let by = |n: &str| p.methods.iter().find(|x| x.name == n).unwrap();
    assert_eq!(by("create_surface").kind, Kind::TwoWay);
    assert_eq!(by("resize").timeout_ms, Some(250));
    assert_eq!(
        by("resize").returns,
        Some(Type::Result(
            Box::new(Type::Unit),
            Box::new(Type::Named("DisplayError".into()))
        ))
    );
    assert_eq!((by("blit").kind, by("blit").queue), (Kind::OneWay, Some(8)));
    assert_eq!(
        (
            by("commit").kind,
            by("commit").sync,
            by("commit").returns.clone()
        ),
        (Kind::TwoWay, true, None)
    );
    assert!(by("cursor_moved").no_queue);
    assert_eq!(by("set_gamma").since, 2);
    assert_eq!(
        by("set_gamma").params[0].ty,
        Type::Vec(
            Box::new(Type::Scalar(idl_parser::model::Scalar::U16)),
            Some(1024)
        )
    );
    assert_eq!(by("create_surface").params[2].ty, Type::String(Some(256)));
    assert_eq!(p.events[0].queue, Some(64));
    assert_eq!(m.consts[0].value, ConstValue::Int(256));
    let TypeDef::Enum(pf) = m.type_def("PixelFormat").unwrap() else {
        panic!()
    };
    let discs: Vec<u32> = pf.variants.iter().map(|v| v.discriminant).collect();
    assert_eq!(discs, [0, 1, 7]);
}

#[test]
fn message_ids_follow_declaration_order_and_pins() {
    let c = check(
        "protocol P {
            fn a();
            event b();
            @id(10) fn c();
            fn d();          // 11: after the pin
            @id(2) event e();
            fn f();          // 3
        }",
    );
    let p = &c.model.protocols[0];
    let mut ids: Vec<(String, u32)> = p.methods.iter().map(|m| (m.name.clone(), m.id)).collect();
    ids.extend(p.events.iter().map(|e| (e.name.clone(), e.id)));
    ids.sort_by_key(|(_, id)| *id);
    let ids: Vec<(&str, u32)> = ids.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    assert_eq!(
        ids,
        [("a", 0), ("b", 1), ("e", 2), ("f", 3), ("c", 10), ("d", 11)]
    );
}

#[test]
fn message_ids_must_stay_unique() {
    let e = errors("protocol P { fn a(); fn b(); @id(1) event c(); @id(0) fn d(); }");
    assert_eq!(
        e.codes(),
        [Code::DuplicateMessageId, Code::DuplicateMessageId]
    );
    let first = &e.as_slice()[0];
    assert_eq!(first.message, "`c` and `b` both have message id 1");
    assert_eq!(first.labels[0].message, "`b` has id 1");
}

#[test]
fn attributes_carry_their_meaning() {
    let c = check(
        "@version(4) protocol P {
            @async fn a();
            @ordered fn b() -> u8;
            @one_shot @since(3) fn c();
            @idempotent @sync @timeout(2 KiB) fn d();
            @no_queue event e();
        }",
    );
    let p = &c.model.protocols[0];
    let m = &p.methods;
    assert!(m[0].is_async && m[0].kind == Kind::OneWay);
    assert_eq!(m[1].delivery, Delivery::Ordered);
    assert_eq!((m[2].delivery, m[2].since), (Delivery::OneShot, 3));
    assert_eq!(
        (m[3].delivery, m[3].kind, m[3].timeout_ms),
        (Delivery::Idempotent, Kind::TwoWay, Some(2048))
    );
    assert_eq!(m[0].delivery, Delivery::Default);
    assert!(p.events[0].no_queue);
    assert_eq!(p.version, 4);
}

#[test]
fn doc_comments_reach_the_model() {
    let c = check_file(Path::new("tests/corpus/valid/comments.idl")).unwrap();
    let m = &c.model;
    let TypeDef::Struct(s) = m.type_def("Commented").unwrap() else {
        panic!()
    };
    assert_eq!(s.docs, ["Doc of the struct.", "Second line."]);
    assert_eq!(s.fields[0].docs, ["Doc of the field."]);
    assert!(
        s.fields[1].docs.is_empty(),
        "/** */ is a plain block comment"
    );
    let TypeDef::Enum(e) = m.type_def("E").unwrap() else {
        panic!()
    };
    assert_eq!(e.docs, ["Doc of the enum."]);
    assert_eq!(e.variants[0].docs, ["Doc of the variant."]);
    let p = &m.protocols[0];
    assert_eq!(p.docs, ["Doc of the protocol."]);
    assert_eq!(p.methods[0].docs, ["Doc of the method."]);
    assert_eq!(p.events[0].docs, ["Doc of the event."]);
}

#[test]
fn import_cycle_is_named() {
    let loader = MemLoader::new()
        .with("a.idl", "import \"b.idl\"; struct A { x: u8 }")
        .with("b.idl", "import \"a.idl\"; struct B { y: u8 }");
    let e = check_source(
        Path::new("a.idl"),
        "import \"b.idl\"; struct A { x: u8 }",
        &loader,
    )
    .unwrap_err();
    assert_eq!(e.codes(), [Code::ImportCycle]);
    let d = &e.as_slice()[0];
    assert_eq!(d.message, "import cycle: a.idl -> b.idl -> a.idl");
    // Reported where the cycle closes: in b.idl.
    assert_eq!(
        (d.file.as_path(), d.line, d.col),
        (Path::new("b.idl"), 1, 8)
    );

    let e = check_source(
        Path::new("self.idl"),
        "import \"self.idl\";",
        &MemLoader::new().with("self.idl", ""),
    )
    .unwrap_err();
    assert_eq!(
        e.as_slice()[0].message,
        "import cycle: self.idl -> self.idl"
    );
}

#[test]
fn imports_resolve_against_the_importing_folder() {
    let loader = MemLoader::new()
        .with(
            "proto/shapes/geo.idl",
            "import \"../units.idl\"; struct P { x: Meters }",
        )
        .with(
            "proto/units.idl",
            "const W: u32 = 4; struct Meters { v: [u8; W] }",
        );
    let c = check_source(
        Path::new("proto/main.idl"),
        "import \"shapes/geo.idl\"; import \"units.idl\"; protocol M { fn f(p: P, m: Meters); }",
        &loader,
    )
    .unwrap();
    assert_eq!(c.files.len(), 3);
    assert_eq!(c.model.type_def("Meters").unwrap().max_size(), Some(4));
}

#[test]
fn names_of_indirect_imports_are_not_in_scope() {
    let loader = MemLoader::new()
        .with("geo.idl", "import \"units.idl\"; struct P { x: Meters }")
        .with("units.idl", "struct Meters { v: u32 }");
    let e = check_source(
        Path::new("main.idl"),
        "import \"geo.idl\"; struct Q { m: Meters }",
        &loader,
    )
    .unwrap_err();
    assert_eq!(e.codes(), [Code::UnknownType]);
    assert_eq!(
        e.as_slice()[0].help.as_deref(),
        Some("`Meters` is defined in `units.idl`: import that file")
    );
}

#[test]
fn errors_in_imports_point_into_them_and_all_are_reported() {
    let loader = MemLoader::new().with("lib.idl", "struct A { x: Strin }\nstruct A { y: u8 }");
    let e = check_source(
        Path::new("main.idl"),
        "import \"lib.idl\";\nstruct B { a: A, b: Nope, c: string<0> }\nprotocol P { event e() -> u8; }",
        &loader,
    )
    .unwrap_err();
    let got: Vec<String> = e
        .iter()
        .map(|d| format!("{}:{}:{} {}", d.file.display(), d.line, d.col, d.code))
        .collect();
    assert_eq!(
        got,
        [
            "main.idl:2:21 E0014",
            "main.idl:2:37 E0026",
            "main.idl:3:27 E0023",
            "lib.idl:1:15 E0014",
            "lib.idl:2:8 E0005",
        ]
    );
    let text = e.render(false);
    assert!(text.contains("┌─ lib.idl:1:15"), "{text}");
    assert!(text.contains("help: did you mean `string`?"), "{text}");
}

#[test]
fn a_broken_import_does_not_cascade() {
    // lib.idl does not parse; `Rect` may well be defined there, so its use
    // is not reported a second time.
    let loader = MemLoader::new().with("lib.idl", "struct Rect { w u32 }");
    let e = check_source(
        Path::new("main.idl"),
        "import \"lib.idl\"; struct S { r: Rect }",
        &loader,
    )
    .unwrap_err();
    assert_eq!(e.codes(), [Code::Syntax]);
    let e = check_source(
        Path::new("main.idl"),
        "import \"gone.idl\"; struct S { r: Rect }",
        &loader,
    )
    .unwrap_err();
    assert_eq!(e.codes(), [Code::MissingImport]);
}

#[test]
fn poisoned_consts_do_not_cascade() {
    let e = errors("const N: u8 = 300; struct S { a: string<N>, b: [u8; N] }");
    assert_eq!(e.codes(), [Code::ConstTypeMismatch]);
}

#[test]
fn sync_fn_attributes() {
    // `@timeout` is fine on a `@sync` fn, not on a plain one-way fn.
    check("protocol P { @sync @timeout(5) fn a(); }");
    let e =
        errors("protocol P { @timeout(5) fn a(); @sync fn b() -> u8; @queue(2) @sync fn c(); }");
    assert_eq!(
        e.codes(),
        [
            Code::MisplacedAttribute,
            Code::MisplacedAttribute,
            Code::ConflictingAttributes
        ]
    );
    let first = &e.as_slice()[0];
    assert!(first.help.as_deref().unwrap().contains("add `@sync`"));
}

#[test]
fn unknown_attribute_suggests() {
    let e = errors("protocol P { @no_queu fn a(); }");
    assert_eq!(
        e.as_slice()[0].help.as_deref(),
        Some("did you mean `@no_queue`?")
    );
}

#[test]
fn rendering_has_code_location_caret_and_help() {
    let e = errors("struct Rect { w: u32 }\nprotocol P {\n    fn f(r: Rec);\n}\n");
    let text = e.render(false);
    let expected = "\
error[E0014]: unknown type `Rec`
  ┌─ t.idl:3:13
  │
3 │     fn f(r: Rec);
  │             ^^^ not defined
  │
  = help: did you mean `Rect`?

";
    assert_eq!(text, expected);
    let colored = e.render(true);
    assert!(
        colored.contains("\u{1b}["),
        "color requested: ANSI escapes expected"
    );
    assert!(!text.contains("\u{1b}["));
    assert_eq!(e.to_string(), text);
}

#[test]
fn unreadable_root_is_a_diagnostic() {
    let e = check_file(Path::new("tests/corpus/does-not-exist.idl")).unwrap_err();
    assert_eq!(e.codes(), [Code::MissingImport]);
    assert!(e.render(false).contains("no such file"));
}

#[test]
fn codes_table_is_complete_and_stable() {
    for (i, (code, text, summary)) in idl_parser::CODES.iter().enumerate() {
        assert_eq!(*text, format!("E{:04}", i + 1));
        assert_eq!(code.as_str(), *text);
        assert!(!summary.is_empty());
    }
}

#[test]
fn consts_and_types_are_told_apart() {
    let e = errors("const N: u32 = 4; struct S { a: N, b: [u8; S] }");
    let helps: Vec<_> = e
        .iter()
        .map(|d| d.help.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        helps,
        ["`N` is a const, not a type", "`S` is a type, not a const"]
    );
}
