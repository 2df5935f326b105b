import Foundation

/// An exclusive lock on a state directory (`flock` on its `lock` file), held for the life of the process: two
/// daemons on one state would renew the same identities side by side and fight over the socket. The file holds
/// the holder's pid, so a second daemon can name it.
public final class StateLock: Sendable {
    public static let fileName = "lock"
    /// Open for the life of the lock; the kernel releases the lock when the process ends, however it ends.
    private let descriptor: Int32
    public let path: String

    /// Takes the lock on `directory` (created 0700 if missing), or throws `locked` naming the holder's pid.
    public init(directory: String) throws {
        try StateStore.prepareDirectory(directory)
        path = directory + "/" + Self.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StoreError(.permissions, "cannot open the lock file \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, buffer.count, 0)
            close(fd)
            guard reason == EWOULDBLOCK else {
                throw StoreError(.permissions, "cannot lock \(path): \(String(cString: strerror(reason)))")
            }
            let holder = String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw StoreError(.locked, "the state directory \(directory) is in use by another bunq-sessiond"
                + (holder.isEmpty ? "" : " (pid \(holder))") + "; one daemon per state")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        descriptor = fd
    }

    deinit {
        close(descriptor)
    }
}
