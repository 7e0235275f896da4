//! Kling's callbacks: [`parse`] turns a body into a task event, [`receive`] runs the
//! whole route (verify, parse, judge, store).

pub mod parse;
pub mod receive;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties;
