// One text packet with fds as SCM_RIGHTS, sent or received on a unix socket: plain POSIX, shared by
// the addon (the fd holder's client, sd_notify) and the holder executable, which has no Node.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <vector>

namespace scm {

// Sends `text` with `fds` (the receiver gets copies) to the connected socket, or to `to` when given.
// Returns sendmsg's result (retried on EINTR); errno tells why it failed.
inline ssize_t Send(int sock, const std::string& text, const std::vector<int>& fds,
                    const struct sockaddr_un* to = nullptr, socklen_t toLen = 0) {
  struct iovec iov = {const_cast<char*>(text.data()), text.size()};
  struct msghdr msg = {};
  if (to) {
    msg.msg_name = const_cast<struct sockaddr_un*>(to);
    msg.msg_namelen = toLen;
  }
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (fds.empty() ? 1 : fds.size())));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

struct Received {
  // recvmsg's result: > 0 bytes of text, 0 the peer closed, < 0 failed (errno kept in `error`).
  ssize_t n = 0;
  int error = 0;
  std::string text;
  // Close-on-exec, now this process's: the caller closes them unless it keeps them.
  std::vector<int> fds;
  // Text or fds did not fit: the packet must be refused.
  bool truncated = false;
};

// Receives one packet without blocking (MSG_DONTWAIT: poll first), at most `maxText` bytes and `maxFds` fds.
inline Received Receive(int sock, size_t maxText, size_t maxFds) {
  Received r;
  std::vector<char> buf(maxText);
  std::vector<char> control(CMSG_SPACE(sizeof(int) * maxFds));
  struct iovec iov = {buf.data(), buf.size()};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  do r.n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (r.n < 0 && errno == EINTR);
  r.error = r.n < 0 ? errno : 0;
  for (struct cmsghdr* c = r.n >= 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      r.fds.push_back(fd);
    }
  }
  if (r.n > 0) r.text.assign(buf.data(), static_cast<size_t>(r.n));
  r.truncated = r.n >= 0 && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  return r;
}

}  // namespace scm
