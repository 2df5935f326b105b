import CurlHTTP
import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Waits until `condition` holds, polling, for at most `timeout`; returns whether it held.
func eventually(within timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// The error an HTTP call threw, or a test issue when it returned.
func httpError(_ operation: () async throws -> HTTPResponse,
               sourceLocation: SourceLocation = #_sourceLocation) async -> (any Error)? {
    do {
        let response = try await operation()
        Issue.record("expected an error, got HTTP \(response.status)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

func expectKind(_ kind: HTTPClientError.Kind, _ error: (any Error)?, sourceLocation: SourceLocation = #_sourceLocation) {
    guard let error = error as? HTTPClientError else {
        Issue.record("expected HTTPClientError.\(kind.rawValue), got \(String(describing: error))", sourceLocation: sourceLocation)
        return
    }
    #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
}

/// Raw sockets for situations the test server cannot produce: a port nobody listens on, a full accept queue.
enum RawSocket {
    /// A TCP listener on 127.0.0.1 with the given backlog; returns its descriptor and port.
    static func listen(backlog: Int32) -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                precondition(bind(fd, sa, length) == 0)
                precondition(getsockname(fd, sa, &length) == 0)
            }
        }
        precondition(Glibc.listen(fd, backlog) == 0)
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// A loopback port that was free a moment ago and now has no listener.
    static func closedPort() -> Int {
        let (fd, port) = listen(backlog: 1)
        close(fd)
        return port
    }

    /// Opens a non-blocking connection to `port`, returning the descriptor (to close later).
    static func connectNonBlocking(port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return fd
    }
}

/// Releases waiters once `target` tasks have arrived: proof that that many requests are in flight at once.
actor Barrier {
    private let target: Int
    private var arrived = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(target: Int) {
        self.target = target
    }

    func arrive() async {
        arrived += 1
        if arrived >= target {
            for waiter in waiters { waiter.resume() }
            waiters.removeAll()
        } else {
            await withCheckedContinuation { waiters.append($0) }
        }
    }

    var count: Int { arrived }
}
