//! From file descriptors to kernel objects: files, sockets, the cwd.

use crate::kernel::{current_task, off, read, read_ptr};

/// The `struct file` behind `fd` in the current process.
#[inline(always)]
pub fn file_of_fd(fd: i64) -> Option<usize> {
    if fd < 0 {
        return None;
    }
    let files = read_ptr(current_task(), off!(task_files)).ok()?;
    let fdt = read_ptr(files, off!(files_fdt)).ok()?;
    // SAFETY: probe read.
    let max: u32 = unsafe { read(fdt, off!(fdtable_max_fds)) }.ok()?;
    if fd as u64 >= u64::from(max) {
        return None;
    }
    let array = read_ptr(fdt, off!(fdtable_fd)).ok()?;
    read_ptr(array, (fd as usize) * 8).ok()
}

/// The `struct sock` behind a socket file (`file->private_data->sk`), and
/// the socket's type (`SOCK_STREAM`...).
#[inline(always)]
pub fn sock_of_file(file: usize) -> Option<(usize, u16)> {
    let socket = read_ptr(file, off!(file_private_data)).ok()?;
    let sk = read_ptr(socket, off!(socket_sk)).ok()?;
    // SAFETY: probe read.
    let ty: i16 = unsafe { read(socket, off!(socket_type)) }.unwrap_or(0);
    Some((sk, ty as u16))
}

/// Address of the current task's `fs->pwd` (a `struct path`).
#[inline(always)]
pub fn cwd_path() -> Option<usize> {
    let fs = read_ptr(current_task(), off!(task_fs)).ok()?;
    Some(fs + off!(fs_pwd))
}
