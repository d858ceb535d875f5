// SPDX-License-Identifier: Apache-2.0
// The frame codec against complete, split, truncated, oversized and malformed input.
#include <gtest/gtest.h>

#include <cstring>

#include "protocol/frame.hpp"

namespace sortie::protocol {
namespace {

pb::Envelope submit_of(int jobs) {
  pb::Envelope env;
  env.set_request_id(42);
  for (int i = 0; i < jobs; ++i) {
    auto* item = env.mutable_submit()->add_items();
    item->mutable_spec()->add_argv("/bin/echo");
    item->mutable_spec()->add_argv(std::to_string(i));
  }
  return env;
}

void feed(FrameDecoder& d, std::string_view bytes) {
  auto span = d.prepare(bytes.size());
  std::memcpy(span.data(), bytes.data(), bytes.size());
  d.commit(bytes.size());
}

TEST(Frame, RoundTripsSeveralFramesInOneRead) {
  std::string wire;
  encode_frame(submit_of(3), wire);
  encode_frame(submit_of(1), wire);
  FrameDecoder d(kDefaultMaxFrame);
  feed(d, wire);
  pb::Envelope out;
  Error e;
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Frame);
  EXPECT_EQ(out.request_id(), 42u);
  EXPECT_EQ(out.submit().items_size(), 3);
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Frame);
  EXPECT_EQ(out.submit().items_size(), 1);
  EXPECT_EQ(d.next(out, e), FrameDecoder::Status::NeedMore);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(Frame, DecodesWhenFedOneByteAtATime) {
  std::string wire;
  encode_frame(submit_of(50), wire);
  FrameDecoder d(kDefaultMaxFrame);
  pb::Envelope out;
  Error e;
  for (std::size_t i = 0; i + 1 < wire.size(); ++i) {
    feed(d, wire.substr(i, 1));
    ASSERT_EQ(d.next(out, e), FrameDecoder::Status::NeedMore) << "at byte " << i;
  }
  feed(d, wire.substr(wire.size() - 1));
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Frame);
  EXPECT_EQ(out.submit().items_size(), 50);
}

TEST(Frame, TruncatedFrameWaitsForMore) {
  std::string wire;
  encode_frame(submit_of(5), wire);
  FrameDecoder d(kDefaultMaxFrame);
  feed(d, wire.substr(0, wire.size() / 2));
  pb::Envelope out;
  Error e;
  EXPECT_EQ(d.next(out, e), FrameDecoder::Status::NeedMore);
  EXPECT_EQ(d.buffered(), wire.size() / 2);
}

TEST(Frame, OversizedFrameIsRejectedFromItsHeader) {
  FrameDecoder d(1024);
  std::string header;
  encode_header(4096, header);
  feed(d, header); // no payload needed to decide
  pb::Envelope out;
  Error e;
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Error);
  EXPECT_EQ(e.code, ErrorCode::InvalidArgument);
  EXPECT_NE(e.message.find("4096 bytes exceeds the limit of 1024"), std::string::npos) << e.message;
  // A failed decoder stays failed.
  EXPECT_EQ(d.next(out, e), FrameDecoder::Status::Error);
}

TEST(Frame, TextOnTheWireIsNamed) {
  FrameDecoder d(kMaxFrameBeforeAuth);
  feed(d, "GET / HTTP/1.1\r\n\r\n");
  pb::Envelope out;
  Error e;
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Error);
  EXPECT_NE(e.message.find("not a sortie peer"), std::string::npos) << e.message;
}

TEST(Frame, GarbagePayloadIsAnError) {
  FrameDecoder d(kDefaultMaxFrame);
  std::string wire;
  encode_header(8, wire);
  wire += std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8);
  feed(d, wire);
  pb::Envelope out;
  Error e;
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Error);
  EXPECT_NE(e.message.find("not a valid sortie message"), std::string::npos);
}

TEST(Frame, EmptyFrameIsAnEmptyEnvelope) {
  FrameDecoder d(kDefaultMaxFrame);
  std::string wire;
  encode_header(0, wire);
  feed(d, wire);
  pb::Envelope out;
  Error e;
  ASSERT_EQ(d.next(out, e), FrameDecoder::Status::Frame);
  EXPECT_EQ(out.body_case(), pb::Envelope::BODY_NOT_SET);
  EXPECT_STREQ(body_name(out), "(empty)");
}

TEST(Frame, NamesBodies) {
  EXPECT_STREQ(body_name(submit_of(1)), "submit");
}

} // namespace
} // namespace sortie::protocol
