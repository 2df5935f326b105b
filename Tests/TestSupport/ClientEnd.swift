import Foundation

/// Client-side checks on raw sockets.
public enum ClientEnd {
    /// Whether the connection on `fd` was ended by its server (end of file or a reset) within `timeout`.
    /// Blocks the calling thread (a test's own thread).
    public static func endedByServer(_ fd: Int32, within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4_096)
        while ContinuousClock.now < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(1, (deadline - ContinuousClock.now) / .milliseconds(1)))
            guard poll(&poller, 1, left) > 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
            if count < 0 && errno != EINTR && errno != EAGAIN { return true }
        }
        return false
    }
}
