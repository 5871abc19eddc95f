//! A component exporting `wasmop:plugin/reconciler@0.9.0`, a contract version the host does not
//! speak: loading it must fail with a message naming both versions.

wit_bindgen::generate!({
    inline: r#"
        package wasmop:plugin@0.9.0;
        interface reconciler {
            metadata: func() -> string;
        }
        world operator {
            export reconciler;
        }
    "#,
    world: "operator",
});

struct Future;

impl exports::wasmop::plugin::reconciler::Guest for Future {
    fn metadata() -> String {
        "from the future".into()
    }
}

export!(Future);
