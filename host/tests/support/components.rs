//! Components that are hard to compile, made with wasm-encoder. A function of
//! nested loops whose every local changes in the innermost one gives
//! cranelift a block parameter per local per loop: 100 loops around 3000
//! locals (a 27 KB component) take ~20 s and ~370 MB to compile, and the
//! cost grows with the square of the locals.

use wasm_encoder::{
    BlockType, CodeSection, Component, ComponentSectionId, Encode, Function, FunctionSection,
    Module, RawSection, TypeSection, ValType,
};

/// A core module with one function: `depth` nested loops, each looping back
/// on a local, around a body that changes each of `locals` locals.
pub fn nested_loops(depth: u32, locals: u32) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I64]);
    module.section(&types);
    let mut functions = FunctionSection::new();
    functions.function(0);
    module.section(&functions);
    let mut f = Function::new([(locals, ValType::I64)]);
    for _ in 0..depth {
        f.instructions().loop_(BlockType::Empty);
    }
    for local in 0..locals {
        f.instructions()
            .local_get(local)
            .i64_const(1)
            .i64_add()
            .local_set(local);
    }
    for d in 0..depth {
        f.instructions()
            .local_get(d % locals)
            .i32_wrap_i64()
            .br_if(0)
            .end();
    }
    f.instructions().local_get(0).end();
    let mut code = CodeSection::new();
    code.function(&f);
    module.section(&code);
    module.finish()
}

/// A component holding nothing but a core module that is hard to compile.
pub fn hard_to_compile(depth: u32, locals: u32) -> Vec<u8> {
    let core = nested_loops(depth, locals);
    let mut component = Component::new();
    component.section(&RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: &core,
    });
    component.finish()
}

/// A guest component with a slow-to-compile core module appended: still a
/// valid module (the extra core module is never instantiated, but compiled).
pub fn slowed(path: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("guest built");
    bytes.push(ComponentSectionId::CoreModule.into());
    nested_loops(100, 1000).as_slice().encode(&mut bytes);
    bytes
}
