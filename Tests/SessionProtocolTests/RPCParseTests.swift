import DynamicJSON
import Foundation
import SessionProtocol
import TestThreads
import Testing

/// The full decoder: parameters as typed JSON values (a boolean is never a number, an integer never a fraction),
/// ids kept byte for byte, and each kind of malformed line refused with its own error.
@Suite(.ownThread) struct RPCParseTests {
    func request(_ line: String) -> RPCRequest? {
        if case .success(let request) = RPCCodec.parse(Array(line.utf8)) { return request }
        return nil
    }

    func refusal(_ line: String) -> RPCLineError? {
        if case .failure(let error) = RPCCodec.parse(Array(line.utf8)) { return error }
        return nil
    }

    @Test func parametersKeepTheirKinds() throws {
        let parsed = try #require(request(#"""
            {"jsonrpc":"2.0","id":"a","method":"session.renew","params":{"context":"ops","force":true,"generation":3,
             "fraction":3.5,"one":1,"none":null,"list":[1,"x",false],"nested":{"a/b":"c"}}}
            """#))
        #expect(parsed.string("context") == "ops" && parsed.bool("force") == true && parsed.integer("generation") == 3)
        #expect(parsed.integer("fraction") == nil && parsed.params["fraction"]?.number == 3.5)
        #expect(parsed.bool("one") == nil, "1 is not true")
        #expect(parsed.integer("force") == nil, "true is not 1")
        #expect(parsed.string("generation") == nil && parsed.params["none"] == .null)
        #expect(parsed.params["list"] == [1, "x", false] && parsed.params["nested"]?["a/b"] == "c")
    }

    @Test func idsComeBackAsWrittenAndOtherNumbersAreRefused() throws {
        for (text, id) in [("1", RPCID.number("1")), ("-7", .number("-7")), ("0", .number("0")), ("-0", .number("-0")),
                           ("18446744073709551615", .number("18446744073709551615")),
                           ("123456789012345678901234567890", .number("123456789012345678901234567890")),
                           ("\"7\"", .string("7")), ("null", .null)] {
            let parsed = try #require(request(#"{"jsonrpc":"2.0","id":\#(text),"method":"daemon.status"}"#), "\(text)")
            #expect(parsed.id == id, "\(text)")
        }
        #expect(request(#"{"jsonrpc":"2.0","method":"daemon.status"}"#)?.id == nil, "a notification has no id")
        for text in ["1.5", "1e3", "true", "[1]", "{}"] {
            let error = try #require(refusal(#"{"jsonrpc":"2.0","id":\#(text),"method":"daemon.status"}"#), "\(text)")
            #expect(error.code == .invalidRequest && error.id == .null, "\(text)")
        }
    }

    @Test func malformedLinesGetTheirOwnErrors() {
        #expect(refusal("{")?.code == .parseError)
        #expect(refusal(#"[{"jsonrpc":"2.0","id":1,"method":"daemon.status"}]"#)?.message.contains("batches") == true)
        #expect(refusal("3")?.code == .invalidRequest)
        #expect(refusal(#"{"jsonrpc":"1.0","id":4,"method":"daemon.status"}"#).map { ($0.code, $0.id) } ?? (.parseError, .null)
            == (.invalidRequest, .number("4")))
        #expect(refusal(#"{"jsonrpc":"2.0","id":5,"method":7}"#)?.code == .invalidRequest)
        #expect(refusal(#"{"jsonrpc":"2.0","id":6,"method":"context.list","params":["ops"]}"#).map { ($0.code, $0.id) }
            ?? (.parseError, .null) == (.invalidParams, .number("6")))
        #expect(request(#"{"jsonrpc":"2.0","id":7,"method":"context.list","params":null}"#)?.params.isEmpty == true)
    }

    @Test func valuesSurviveTheirOwnEncoding() throws {
        let value: JSONValue = ["s": "a \"quoted\" / slash", "i": .integer(Int.max), "d": 0.25, "b": false, "n": nil,
                                "a": [1, [2, ["x": "y"]]], "o": [:]]
        #expect(value.json == #"{"a":[1,[2,{"x":"y"}]],"b":false,"d":0.25,"i":9223372036854775807,"n":null,"o":{},"s":"a \"quoted\" / slash"}"#)
        #expect(JSONValue(parsing: Data(value.json.utf8)) == value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data(value.json.utf8)) == value)
        #expect(JSONValue(parsing: Data("not json".utf8)) == nil)
        #expect("\(JSONValue.string("ops"))" == "ops" && "\(JSONValue.integer(3))" == "3", "a line shows a string as itself")
    }
}
