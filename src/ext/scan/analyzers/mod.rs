//! The analyzers: each reads one kind of file and names the packages in it.
//! All are pure functions of the file's bytes; `layer` decides which file
//! goes to which.

pub mod apk;
pub mod cargo;
pub mod dpkg;
pub mod golang;
pub mod npm;
pub mod os;
pub mod python;
pub mod rpm;
pub mod sqlite;
