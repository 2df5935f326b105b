import NIOCore
import SessionProtocol

/// One framed input: a line (without its `\n`, and without a trailing `\r`), or notice that a line exceeded the
/// limit (the connection is then answered -32600 and closed; nothing after it is read).
enum InboundLine {
    case line(ByteBuffer)
    case oversize
}

/// Splits the byte stream at `\n`, refusing lines over `RPCCodec.maxLineBytes` without buffering them.
struct LineFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = InboundLine
    private var overflowed = false

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if overflowed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        let view = buffer.readableBytesView
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > RPCCodec.maxLineBytes { overflow(context, &buffer) }
            return .needMoreData
        }
        var length = newline - view.startIndex
        guard length <= RPCCodec.maxLineBytes + 1 else {
            overflow(context, &buffer)
            return .needMoreData
        }
        var line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        if length > 0, line.getInteger(at: line.readerIndex + length - 1, as: UInt8.self) == UInt8(ascii: "\r") {
            length -= 1
            line = line.getSlice(at: line.readerIndex, length: length)!
        }
        guard length <= RPCCodec.maxLineBytes else {
            overflow(context, &buffer)
            return .needMoreData
        }
        context.fireChannelRead(wrapInboundOut(.line(line)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    private mutating func overflow(_ context: ChannelHandlerContext, _ buffer: inout ByteBuffer) {
        overflowed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        context.fireChannelRead(wrapInboundOut(.oversize))
    }
}
