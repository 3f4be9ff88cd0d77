//! From file descriptors to kernel objects: files, sockets, the cwd.

use crate::kernel::{current_task, load, off, read, read_ptr};

/// The `struct file` behind `fd` in the current process.
#[inline(always)]
pub fn file_of_fd(fd: i64) -> Option<usize> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the current task is BTF-typed, and so are its files and
    // their table (see `load`); the array of file pointers is not, so its
    // slot is a probe read.
    let (fdt, max) = unsafe {
        let files: usize = load(current_task(), off!(task_files));
        let fdt: usize = load(files, off!(files_fdt));
        (fdt, load::<u32>(fdt, off!(fdtable_max_fds)))
    };
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
