import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A load generator that costs little: `threads` threads, each driving its share of the connections through
/// poll(2), one request outstanding per connection. A thread per blocking connection spends the shared 2 cores on
/// context switches and measures itself (redis measured 104k/s that way, against well over 200k/s like this).
extension Bench {
    /// `request` over each connection, back to back, for `seconds`; `complete` says whether the bytes received
    /// so far hold the whole answer. Latency per request; the rate counts requests.
    static func pollLoad(connections: Int, threads: Int = 2, seconds: Double, connect: @escaping @Sendable () -> Int32?,
                          request: [UInt8], complete: @escaping @Sendable (UnsafeRawBufferPointer) -> Bool) -> LoadResult {
        let samples = Mutex<[UInt64]>([])
        let done = DispatchGroup()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        let perThread = (0..<threads).map { index in connections / threads + (index < connections % threads ? 1 : 0) }
        for count in perThread where count > 0 {
            done.enter()
            let thread = Thread {
                defer { done.leave() }
                let local = drive(count: count, deadline: deadline, connect: connect, request: request, complete: complete)
                samples.withLock { $0.append(contentsOf: local) }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        done.wait()
        var all = samples.withLock { $0 }
        all.sort()
        guard !all.isEmpty else { return LoadResult(rate: 0, p50: 0, p99: 0) }
        return LoadResult(rate: Double(all.count) / seconds, p50: all[all.count / 2],
                          p99: all[min(all.count - 1, all.count * 99 / 100)])
    }

    /// One thread's connections: send, wait for readiness (poll: a few dozen descriptors per thread), read until
    /// complete, record, send again.
    private static func drive(count: Int, deadline: UInt64, connect: () -> Int32?, request: [UInt8],
                              complete: (UnsafeRawBufferPointer) -> Bool) -> [UInt64] {
        var polls: [pollfd] = []
        var received: [Int] = []
        var started: [UInt64] = []
        var buffers: [[UInt8]] = []
        var local: [UInt64] = []
        local.reserveCapacity(1 << 20)
        for _ in 0..<count {
            guard let fd = connect() else { continue }
            polls.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            received.append(0)
            buffers.append([UInt8](repeating: 0, count: 65_536))
            started.append(DispatchTime.now().uptimeNanoseconds)
            _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        defer { for entry in polls { close(entry.fd) } }
        while DispatchTime.now().uptimeNanoseconds < deadline {
            let ready = poll(&polls, nfds_t(polls.count), 100)
            guard ready >= 0 else { if errno == EINTR { continue } else { break } }
            for index in polls.indices where polls[index].revents != 0 {
                polls[index].revents = 0
                let fd = polls[index].fd
                let offset = received[index]
                let count = buffers[index].withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, $0.count - offset, 0) }
                guard count > 0 else { continue }
                received[index] += count
                let length = received[index]
                let whole = buffers[index].withUnsafeBytes { complete(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
                guard whole else { continue }
                let now = DispatchTime.now().uptimeNanoseconds
                local.append(now - started[index])
                received[index] = 0
                started[index] = now
                _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
        }
        return local
    }

    /// Whether `bytes` hold one whole line (our protocol's answer).
    static func wholeLine(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.last == UInt8(ascii: "\n")
    }

    /// Whether `bytes` hold one whole RESP bulk string (`$N\r\n`, N bytes, CRLF).
    static func wholeBulkString(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.first == UInt8(ascii: "$"), let end = bytes.firstIndex(of: UInt8(ascii: "\n")), end >= 2,
              let length = Int(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[1..<(end - 1)]), as: UTF8.self))
        else { return false }
        return bytes.count >= end + 1 + length + 2
    }
}
