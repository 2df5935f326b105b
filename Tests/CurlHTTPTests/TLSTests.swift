import CurlHTTP
import Foundation
import TestThreads
import Testing
import TestSupport

/// HTTPS against a real TLS server (`openssl s_server`) whose certificate comes from a CA the test makes.
@Suite(.ownThread) struct TLSTests {
    struct TLSServer {
        let process: Process
        let port: Int
        let caFile: String

        /// Ends the server for certain: SIGKILL and wait, so no test run leaves one behind.
        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    struct ServerDidNotStart: Error {}

    /// Starts `openssl s_server` with a certificate for `subjectAltName`, issued by a fresh CA.
    func startServer(in dir: TemporaryDirectory, subjectAltName: String = "IP:127.0.0.1,DNS:localhost") async throws -> TLSServer {
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.path("ca.key"),
                           "-out", dir.path("ca.pem"), "-days", "2", "-subj", "/CN=bunq-sessiond test CA"])
        try Command.check(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.path("server.key"),
                           "-out", dir.path("server.csr"), "-subj", "/CN=localhost"])
        _ = try dir.write("san.ext", "subjectAltName=\(subjectAltName)\n")
        try Command.check(["openssl", "x509", "-req", "-in", dir.path("server.csr"), "-CA", dir.path("ca.pem"),
                           "-CAkey", dir.path("ca.key"), "-CAcreateserial", "-days", "2",
                           "-extfile", dir.path("san.ext"), "-out", dir.path("server.pem")])
        _ = try dir.write("hello.txt", "hello over TLS\n")

        let port = RawSocket.closedPort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "s_server", "-accept", "127.0.0.1:\(port)", "-cert", dir.path("server.pem"),
                             "-key", dir.path("server.key"), "-WWW", "-quiet"]
        process.currentDirectoryURL = dir.url
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Ready once it accepts TCP connections.
        let ready = await eventually(within: .seconds(10)) {
            let fd = RawSocket.connectNonBlocking(port: port)
            defer { close(fd) }
            var pollFD = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pollFD, 1, 200) == 1 else { return false }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            return error == 0
        }
        guard ready else {
            kill(process.processIdentifier, SIGKILL)
            throw ServerDidNotStart()
        }
        return TLSServer(process: process, port: port, caFile: dir.path("ca.pem"))
    }

    @Test func untrustedCertificateFailsAndTheConfiguredCASucceeds() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try await startServer(in: dir)
        defer { server.stop() }
        let url = "https://127.0.0.1:\(server.port)/hello.txt"

        let systemTrust = try HTTPClient()
        expectKind(.tls, await httpError { try await systemTrust.execute(HTTPRequest(url: url)) })
        #expect((await httpError { try await systemTrust.execute(HTTPRequest(url: url)) } as? HTTPClientError)?.isTransient == false)
        await systemTrust.shutdown()

        let trusting = try HTTPClient(configuration: .init(caFile: server.caFile))
        let response = try await trusting.execute(HTTPRequest(url: url))
        #expect(response.status == 200)
        #expect(String(decoding: response.body, as: UTF8.self) == "hello over TLS\n")
        await trusting.shutdown()
    }

    @Test func aTrustedCertificateForAnotherNameFails() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try await startServer(in: dir, subjectAltName: "DNS:api.bunq.example")
        defer { server.stop() }
        let client = try HTTPClient(configuration: .init(caFile: server.caFile))
        expectKind(.tls, await httpError {
            try await client.execute(HTTPRequest(url: "https://127.0.0.1:\(server.port)/hello.txt"))
        })
        await client.shutdown()
    }
}
