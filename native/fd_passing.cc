// Text packets with fds (SCM_RIGHTS) over SOCK_SEQPACKET unix sockets, synchronous: how the daemon
// talks to the fd holder (native/holder/holder.cc), which Node's net module cannot do.
#include "fd_passing.h"
#include "errors.h"
#include "scm_rights.h"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

namespace {

constexpr size_t kMaxPacket = 4096;
constexpr size_t kMaxFds = 8;

int FdArg(const Napi::Value& value, const char* what) {
  if (!value.IsNumber()) throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a number");
  return value.As<Napi::Number>().Int32Value();
}

// A connected, close-on-exec SOCK_SEQPACKET socket to `path`.
Napi::Value SeqpacketConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) ThrowErrno(env, ENAMETOOLONG, "connect", path);
  memcpy(addr.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  int rc;
  do rc = connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "connect", path);
  }
  return Napi::Number::New(env, fd);
}

// sendPacket(fd, text, fds?): one packet, the fds as SCM_RIGHTS (the receiver gets copies).
Napi::Value SendPacket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = FdArg(info[0], "fd");
  if (!info[1].IsString()) throw Napi::TypeError::New(env, "text must be a string");
  std::string text = info[1].As<Napi::String>().Utf8Value();
  std::vector<int> fds;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array arr = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) fds.push_back(FdArg(arr.Get(i), "fds[i]"));
  }
  if (fds.size() > kMaxFds) throw Napi::RangeError::New(env, "at most 8 fds per packet");
  ssize_t n = scm::Send(sock, text, fds);
  if (n < 0) ThrowErrno(env, errno, "sendmsg");
  return env.Undefined();
}

// recvPacket(fd, timeoutMs): { text, fds } (fds close-on-exec, now this process's), 'timeout' when
// nothing came in time (0: only what is there already), 'closed' when the peer is gone.
Napi::Value RecvPacket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = FdArg(info[0], "fd");
  int timeout = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : -1;
  struct pollfd p = {sock, POLLIN, 0};
  int ready;
  do ready = poll(&p, 1, timeout);
  while (ready < 0 && errno == EINTR);
  if (ready < 0) ThrowErrno(env, errno, "poll");
  if (ready == 0) return Napi::String::New(env, "timeout");
  scm::Received r = scm::Receive(sock, kMaxPacket, kMaxFds);
  if (r.n < 0 && (r.error == EAGAIN || r.error == EWOULDBLOCK)) return Napi::String::New(env, "timeout");
  if (r.n == 0 || (r.n < 0 && (r.error == ECONNRESET || r.error == EPIPE))) {
    for (int fd : r.fds) close(fd);
    return Napi::String::New(env, "closed");
  }
  if (r.n < 0) ThrowErrno(env, r.error, "recvmsg");
  if (r.truncated) {
    for (int fd : r.fds) close(fd);
    throw Napi::Error::New(env, "recvmsg: packet truncated (text or fds)");
  }
  const std::vector<int>& fds = r.fds;
  Napi::Object out = Napi::Object::New(env);
  out.Set("text", Napi::String::New(env, r.text));
  Napi::Array arr = Napi::Array::New(env, fds.size());
  for (size_t i = 0; i < fds.size(); i++) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  out.Set("fds", arr);
  return out;
}

}  // namespace

void InitFdPassing(Napi::Env env, Napi::Object exports) {
  exports.Set("seqpacketConnect", Napi::Function::New(env, SeqpacketConnect));
  exports.Set("sendPacket", Napi::Function::New(env, SendPacket));
  exports.Set("recvPacket", Napi::Function::New(env, RecvPacket));
}
