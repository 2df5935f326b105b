import CurlHTTP
import Foundation
import TestThreads
import Testing
import TestSupport

@Suite(.ownThread) struct HTTPClientTests {
    /// Echoes the request: body back as-is, and what arrived in `x-echo-*` headers.
    static let echo: TestHTTPServer.Handler = { request in
        TestHTTPResponse(status: 200, headers: [
            ("x-echo-method", request.method),
            ("x-echo-content-type", request.header("content-type") ?? "(none)"),
            ("x-echo-expect", request.header("expect") ?? "(none)"),
            ("x-echo-request-id", request.header("x-bunq-client-request-id") ?? "(none)"),
            ("X-Bunq-Server-Signature", "c2lnbmF0dXJl"),
            ("x-bunq-client-response-id", "e5c1ad6f"),
        ], body: request.body)
    }

    @Test func getReturnsStatusHeadersAndBodyWithCaseInsensitiveLookup() async throws {
        try await TestHTTPServer.with(handler: Self.echo) { server in
            let client = try HTTPClient()
            let response = try await client.execute(HTTPRequest(
                url: server.baseURL + "/v1/user", headers: ["X-Bunq-Client-Request-Id": "abc-123"]))
            #expect(response.status == 200)
            #expect(response.headers["x-bunq-server-signature"] == "c2lnbmF0dXJl")
            #expect(response.headers["X-BUNQ-CLIENT-RESPONSE-ID"] == "e5c1ad6f")
            #expect(response.headers["x-echo-method"] == "GET")
            #expect(response.headers["x-echo-request-id"] == "abc-123")
            #expect(response.headers["x-echo-expect"] == "(none)")
            #expect(response.body.isEmpty)
            #expect(response.httpVersion == "1.1")
            await client.shutdown()
        }
    }

    @Test func errorStatusesAreResponsesNotErrors() async throws {
        try await TestHTTPServer.with(handler: { _ in
            TestHTTPResponse(status: 429, text: #"{"Error":[{"error_description":"Too many requests."}]}"#)
        }) { server in
            let client = try HTTPClient()
            let response = try await client.execute(HTTPRequest(method: "POST", url: server.baseURL + "/v1/session-server"))
            #expect(response.status == 429)
            #expect(String(decoding: response.body, as: UTF8.self).contains("Too many requests."))
            await client.shutdown()
        }
    }

    @Test func oneMebibyteBodyRoundTripsByteExact() async throws {
        try await TestHTTPServer.with(handler: Self.echo) { server in
            let client = try HTTPClient()
            var body = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) })
            body[0] = 0
            body[body.count / 2] = 0 // NUL bytes must survive
            let response = try await client.execute(HTTPRequest(
                method: "POST", url: server.baseURL + "/echo",
                headers: ["Content-Type": "application/octet-stream"], body: body))
            #expect(response.status == 200)
            #expect(response.body.count == 1 << 20)
            #expect(response.body == body)
            #expect(response.headers["x-echo-content-type"] == "application/octet-stream")
            #expect(response.headers["x-echo-expect"] == "(none)", "no Expect: 100-continue round trip")
            await client.shutdown()
        }
    }

    @Test func methodsAndBodiesAreSentAsGiven() async throws {
        try await TestHTTPServer.with(handler: Self.echo) { server in
            let client = try HTTPClient()
            for (method, body) in [("PUT", #"{"status":"CANCELLED"}"#), ("DELETE", ""), ("POST", "")] {
                let response = try await client.execute(HTTPRequest(
                    method: method, url: server.baseURL + "/v1/session/0", body: Data(body.utf8)))
                #expect(response.headers["x-echo-method"] == method)
                #expect(String(decoding: response.body, as: UTF8.self) == body)
                #expect(response.headers["x-echo-content-type"] == "(none)", "no content type the caller did not set")
            }
            await client.shutdown()
        }
    }

    @Test func sequentialRequestsReuseOneConnection() async throws {
        try await TestHTTPServer.with(handler: Self.echo) { server in
            let client = try HTTPClient()
            var newConnections: [Int] = []
            for index in 0..<10 {
                let response = try await client.execute(HTTPRequest(
                    method: "POST", url: server.baseURL + "/r\(index)", body: Data("\(index)".utf8)))
                #expect(String(decoding: response.body, as: UTF8.self) == "\(index)")
                newConnections.append(response.newConnections)
            }
            #expect(newConnections == [1] + Array(repeating: 0, count: 9))
            #expect(server.connectionsAccepted == 1)
            await client.shutdown()
        }
    }

    @Test func sixtyFourRequestsAreInFlightAtOnce() async throws {
        // The server answers nobody until all 64 requests have arrived: this completes only if the client runs
        // them concurrently, and only if waiting for them occupies none of the (two) cooperative threads.
        let barrier = Barrier(target: 64)
        try await TestHTTPServer.with(handler: { request in
            await barrier.arrive()
            return TestHTTPResponse(text: request.path)
        }) { server in
            let client = try HTTPClient()
            let paths = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<64 {
                    group.addTask {
                        let response = try await client.execute(HTTPRequest(
                            url: server.baseURL + "/n/\(index)", timeout: .seconds(20)))
                        return String(decoding: response.body, as: UTF8.self)
                    }
                }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
            #expect(paths == Set((0..<64).map { "/n/\($0)" }))
            #expect(await barrier.count == 64)
            await client.shutdown()
        }
    }

    @Test func aStalledServerHitsTheTimeout() async throws {
        try await TestHTTPServer.with(handler: { request in
            await request.connectionClosed()
            return nil
        }) { server in
            let client = try HTTPClient(configuration: .init(timeout: .milliseconds(400)))
            let started = ContinuousClock.now
            let error = await httpError { try await client.execute(HTTPRequest(url: server.baseURL + "/stall")) }
            expectKind(.timeout, error)
            #expect(ContinuousClock.now - started < .seconds(10))
            // A per-request timeout overrides the client's.
            let error2 = await httpError {
                try await client.execute(HTTPRequest(url: server.baseURL + "/stall", timeout: .milliseconds(200)))
            }
            expectKind(.timeout, error2)
            await client.shutdown()
        }
    }

    @Test func aRefusedPortIsClassified() async throws {
        let client = try HTTPClient()
        let port = RawSocket.closedPort()
        let error = await httpError {
            try await client.execute(HTTPRequest(url: "http://127.0.0.1:\(port)/v1/token?client_secret=s3cr3t-value"))
        }
        expectKind(.connectionRefused, error)
        let text = "\(error.map { "\($0)" } ?? "")"
        #expect(text.contains("127.0.0.1:\(port)/v1/token"), "the endpoint is named: \(text)")
        #expect(!text.contains("s3cr3t-value"), "query strings can hold secrets and never appear in errors")
        #expect((error as? HTTPClientError)?.isTransient == true)
        await client.shutdown()
    }

    @Test func anUnresolvableHostIsADNSError() async throws {
        let client = try HTTPClient(configuration: .init(connectTimeout: .seconds(5), timeout: .seconds(10)))
        let error = await httpError { try await client.execute(HTTPRequest(url: "http://bunq-sessiond-test.invalid/")) }
        expectKind(.dns, error)
        await client.shutdown()
    }

    @Test func aFullAcceptQueueHitsTheConnectTimeout() async throws {
        // A listener that never accepts, with its accept queue filled: the kernel drops further SYNs.
        let (listener, port) = RawSocket.listen(backlog: 0)
        let fillers = (0..<4).map { _ in RawSocket.connectNonBlocking(port: port) }
        defer {
            fillers.forEach { close($0) }
            close(listener)
        }
        try await Task.sleep(for: .milliseconds(100))
        let client = try HTTPClient(configuration: .init(connectTimeout: .milliseconds(300), timeout: .seconds(10)))
        let error = await httpError { try await client.execute(HTTPRequest(url: "http://127.0.0.1:\(port)/")) }
        expectKind(.connectTimeout, error)
        await client.shutdown()
    }

    /// Runs `body` with a client and one of its requests held by a server that never answers, once the server
    /// has the request.
    func withStalledRequest(_ body: @escaping @Sendable (TestHTTPServer, HTTPClient, Task<HTTPResponse, any Error>) async throws -> Void) async throws {
        let (arrivals, arrived) = AsyncStream<Void>.makeStream()
        try await TestHTTPServer.with(handler: { request in
            arrived.yield()
            await request.connectionClosed()
            return nil
        }) { server in
            let client = try HTTPClient()
            let task = Task { try await client.execute(HTTPRequest(url: server.baseURL + "/stall")) }
            var iterator = arrivals.makeAsyncIterator()
            _ = await iterator.next()
            try await body(server, client, task)
        }
    }

    @Test func cancellationAbortsTheTransferAndClosesItsConnection() async throws {
        try await withStalledRequest { server, client, task in
            #expect(server.connectionsOpen == 1)
            task.cancel()
            let result = await task.result
            #expect(throws: CancellationError.self) { try result.get() }
            #expect(await eventually { server.connectionsOpen == 0 }, "the server sees the connection closed")

            // The client keeps working after a cancellation.
            let done = Task { try await client.execute(HTTPRequest(url: server.baseURL + "/stall", timeout: .milliseconds(100))) }
            expectKind(.timeout, await httpError { try await done.value })
            await client.shutdown()
        }
    }

    @Test func aTaskCancelledBeforeSendingNeverSends() async throws {
        try await TestHTTPServer.with(handler: Self.echo) { server in
            let client = try HTTPClient()
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await client.execute(HTTPRequest(url: server.baseURL + "/never"))
            }
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(server.connectionsAccepted == 0)
            await client.shutdown()
        }
    }

    @Test func droppedConnectionsAndOversizedBodiesAreClassified() async throws {
        try await TestHTTPServer.with(handler: { request in
            request.path == "/drop" ? nil : TestHTTPResponse(body: [UInt8](repeating: 0x41, count: 5000))
        }) { server in
            let client = try HTTPClient(configuration: .init(maxResponseBytes: 4096))
            expectKind(.connectionLost, await httpError { try await client.execute(HTTPRequest(url: server.baseURL + "/drop")) })
            expectKind(.responseTooLarge, await httpError { try await client.execute(HTTPRequest(url: server.baseURL + "/big")) })
            await client.shutdown()
        }
    }

    @Test func invalidRequestsFailBeforeAnythingIsSent() async throws {
        let client = try HTTPClient()
        expectKind(.invalidRequest, await httpError { try await client.execute(HTTPRequest(url: "ftp://127.0.0.1/x")) })
        expectKind(.invalidRequest, await httpError { try await client.execute(HTTPRequest(url: "not a url")) })
        for url in ["http://", "https:///v1/user", "http://user@/x", "http:/127.0.0.1/", "http://:8080/"] {
            expectKind(.invalidRequest, await httpError { try await client.execute(HTTPRequest(url: url)) })
        }
        expectKind(.invalidRequest, await httpError { try await client.execute(HTTPRequest(method: "get", url: "http://127.0.0.1/")) })
        expectKind(.invalidRequest, await httpError {
            try await client.execute(HTTPRequest(url: "http://127.0.0.1/", headers: ["X-Evil": "a\r\nX-Injected: 1"]))
        })
        #expect(throws: HTTPClientError.self) { try HTTPClient(configuration: .init(caFile: "/nonexistent/ca.pem")) }
        await client.shutdown()
    }

    @Test func shutdownFailsInFlightAndLaterRequests() async throws {
        try await withStalledRequest { server, client, task in
            await client.shutdown()
            expectKind(.shutdown, await httpError { try await task.value })
            expectKind(.shutdown, await httpError { try await client.execute(HTTPRequest(url: server.baseURL + "/")) })
        }
    }

    @Test func headersDescriptionRedactsCredentials() {
        let headers: HTTPHeaders = ["X-Bunq-Client-Authentication": "0123abcd", "X-Bunq-Language": "en_US"]
        #expect(!headers.description.contains("0123abcd"))
        #expect(headers.description.contains("en_US"))
        #expect(headers["x-bunq-client-authentication"] == "0123abcd")
    }
}
