// The calls take and give `JSONValue`s: one import of SessiondClient is all a caller needs.
@_exported import DynamicJSON
import Foundation
import SessionProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Why a call to bunq-sessiond failed.
public enum SessiondClientError: Error, CustomStringConvertible {
    /// The socket could not be reached (daemon not running, wrong path, no permission), or the daemon refused the
    /// connection because it is at its connection limit ("daemon busy").
    case unreachable(path: String, reason: String)
    /// The daemon answered with a JSON-RPC error.
    case rpc(code: Int, message: String, data: [String: String]?)
    /// The connection broke or the reply was not understood.
    case protocolError(String)

    public var description: String {
        switch self {
        case .unreachable(let path, let reason): "cannot reach bunq-sessiond at \(path): \(reason)"
        case .rpc(let code, let message, let data):
            "\(message) (\(code))" + (data.map { " " + RPCJSON.encode($0) } ?? "")
        case .protocolError(let reason): "protocol error: \(reason)"
        }
    }
}

/// A connection to bunq-sessiond's Unix socket, speaking newline-delimited JSON-RPC 2.0.
///
/// Calls block the calling thread until the answer arrives; use one connection per thread (it is not Sendable).
public final class SessiondConnection {
    /// `$BUNQ_SESSIOND_SOCKET`, else `/run/bunq-sessiond/socket`.
    public static var defaultPath: String {
        ProcessInfo.processInfo.environment["BUNQ_SESSIOND_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "/run/bunq-sessiond/socket"
    }

    public let path: String
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var nextId: Int64 = 0
    /// The last line read, as received.
    private var lastLine = Data()
    /// Notifications that arrived while waiting for an answer.
    private var queuedNotifications: [(method: String, params: [String: JSONValue])] = []

    public init(path: String = SessiondConnection.defaultPath) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SessiondClientError.unreachable(path: path, reason: String(cString: strerror(errno))) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw SessiondClientError.unreachable(path: path, reason: "the path is too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw SessiondClientError.unreachable(path: path, reason: reason)
        }
        self.fd = fd
    }

    deinit {
        close(fd)
    }

    /// Ends the connection for both sides, from any thread: a call or `nextNotification()` blocked on it returns
    /// with an error. Valid while the connection lives (its descriptor is closed when it is released).
    public struct ShutdownHandle: Sendable {
        let fd: Int32
        public func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    }

    public var shutdownHandle: ShutdownHandle { ShutdownHandle(fd: fd) }

    /// Calls `method` and returns its result object.
    @discardableResult
    public func call(_ method: String, _ params: [String: JSONValue] = [:]) throws -> [String: JSONValue] {
        nextId += 1
        let id = nextId
        let request: JSONValue = ["jsonrpc": "2.0", "id": .integer(Int(id)), "method": .string(method), "params": .object(params)]
        let line = request.json + "\n"
        do {
            try send(Array(line.utf8))
        } catch {
            // A daemon at its connection limit answers and closes before our request is read; its answer may be
            // waiting even though sending failed.
            if let answer = try? readMessage(), answer["id"] == .null, let problem = refusal(answer) { throw problem }
            throw error
        }
        while true {
            let message = try readMessage()
            if message["id"] == nil, let method = message["method"]?.string {
                queuedNotifications.append((method, message["params"]?.object ?? [:]))
                continue
            }
            // An error with a null id answers no request in particular: the connection itself was refused (over
            // the daemon's connection limit) or a line could not be read. Either way, nothing else will come.
            if message["id"] == .null, let problem = refusal(message) { throw problem }
            guard message["id"]?.integer == Int(id) else { continue }
            if let error = message["error"]?.object {
                throw SessiondClientError.rpc(code: error["code"]?.integer ?? 0, message: error["message"]?.string ?? "",
                                              data: error["data"]?.object?.mapValues(\.description))
            }
            return message["result"]?.object ?? [:]
        }
    }

    /// Calls `method` and reads its result as `Result`, one of the protocol's types (`RPCResult.DaemonStatus`,
    /// `RPCResult.Session`, …).
    public func call<Result: Decodable>(_ method: String, _ params: [String: JSONValue] = [:], as type: Result.Type) throws -> Result {
        try call(method, params)
        // The answer's own bytes: `call` returns once it has read the line that answers this request.
        do {
            return try RPCJSON.decode(RPCAnswer<Result>.self, from: lastLine).result
        } catch {
            throw SessiondClientError.protocolError("the result of \(method) is not what the protocol says: \(error)")
        }
    }

    /// What an error answer with a null id means: "daemon busy" when the daemon refused the connection at its
    /// limit, else the error itself; nil when the message is no error.
    private func refusal(_ message: [String: JSONValue]) -> SessiondClientError? {
        guard let error = message["error"]?.object else { return nil }
        let text = error["message"]?.string ?? ""
        if text == "Too many connections" {
            return .unreachable(path: path, reason: "daemon busy (too many connections); retry later")
        }
        return .rpc(code: error["code"]?.integer ?? 0, message: text, data: nil)
    }

    /// The next server notification (`session.rotated`, `context.state`), blocking until one arrives.
    public func nextNotification() throws -> (method: String, params: [String: JSONValue]) {
        if !queuedNotifications.isEmpty { return queuedNotifications.removeFirst() }
        while true {
            let message = try readMessage()
            if message["id"] == nil, let method = message["method"]?.string {
                return (method, message["params"]?.object ?? [:])
            }
        }
    }

    private func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw SessiondClientError.protocolError("the connection closed while sending") }
            offset += written
        }
    }

    private func readMessage() throws -> [String: JSONValue] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[..<newline]
                buffer.removeSubrange(...newline)
                lastLine = Data(line)
                guard let object = JSONValue(parsing: lastLine)?.object else {
                    throw SessiondClientError.protocolError("an answer is not a JSON object")
                }
                return object
            }
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { throw SessiondClientError.protocolError("the daemon closed the connection") }
            buffer.append(contentsOf: chunk.prefix(count))
        }
    }
}

/// A JSON-RPC answer's result, as a type reads it.
private struct RPCAnswer<Result: Decodable>: Decodable {
    let result: Result
}
