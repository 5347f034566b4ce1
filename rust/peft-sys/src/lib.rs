//! Raw FFI bindings to libpeft, generated from `include/peft/peft.h` by bindgen and
//! checked in (`regenerate.sh`). Use the `peft` crate for the safe API.
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
include!("bindings.rs");
