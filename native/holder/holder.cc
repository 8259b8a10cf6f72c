// erofs-ondemand-holder SOCKET LOCKFILE: keeps the daemon's kernel-facing fds (fanotify group,
// /dev/fuse, /dev/cachefiles) on nodes without systemd, so that the kernel objects outlive a daemon
// that dies and the next daemon takes them over. It does nothing else.
//
// Start: binds a SOCK_SEQPACKET unix socket at SOCKET (mode 0600) and listens; refuses to start if
// another holder answers there (a socket nobody answers on is stale and removed); then detaches
// (fork, setsid): the command returns once the socket takes connections.
//
// Protocol: one message per packet, text plus optional fds (SCM_RIGHTS); each request gets one reply,
// "OK[ detail]" or "ERR reason".
//   HELLO      + the client's fd of LOCKFILE. Accepted when the peer has the holder's uid, the fd is
//              LOCKFILE (same dev/ino) and flock(LOCK_EX|LOCK_NB) succeeds on it: only the open file
//              description that holds the daemon's lock passes (or any when nobody holds it, which
//              then holds it). Anything else is refused and the connection closed. An accepted client
//              replaces the one before (which cannot hold the lock any more). Reply: "OK pid N".
//   KEEP name  + 1 fd: keeps it under name, closing a copy kept before under that name.
//   DROP name  closes the copy kept under name.
//   LIST       one packet "FD name" with the fd per kept fd, then "END".
//   EXIT       closes everything, removes SOCKET, exits 0.
// Every request but HELLO needs an accepted HELLO on that connection first.
//
// The fds are kept while no client is connected. With no fd kept and no client, the holder exits:
// there is nothing to keep. Each event is one line on stderr.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "../scm_rights.h"

namespace {

using Clock = std::chrono::steady_clock;

// A started holder that nobody connects to must not stay forever: the daemon that spawned it died.
constexpr auto kFirstClientWait = std::chrono::seconds(30);
// A connection that does not prove the lock soon is dropped: it must not hold a slot.
constexpr auto kHelloWait = std::chrono::seconds(5);
constexpr size_t kMaxPending = 16;
constexpr size_t kMaxKept = 4096;
constexpr size_t kMaxName = 255;
constexpr size_t kMaxFdsPerPacket = 8;
constexpr size_t kMaxPacket = 4096;

std::string g_socket;
std::string g_lockfile;

void Log(const char* fmt, ...) {
  char when[32];
  time_t now = time(nullptr);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s erofs-ondemand-holder[%d]: %s\n", when, static_cast<int>(getpid()), text);
  fflush(stderr);
}

struct Packet {
  std::string text;
  std::vector<int> fds;
  bool none = false;     // nothing to read after all
  bool closed = false;   // the peer is gone (EOF or error)
  bool invalid = false;  // truncated text or fds: refused
};

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

Packet Receive(int conn) {
  Packet p;
  scm::Received r = scm::Receive(conn, kMaxPacket, kMaxFdsPerPacket);
  if (r.n < 0 && (r.error == EAGAIN || r.error == EWOULDBLOCK)) {
    p.none = true;
    return p;
  }
  p.fds = std::move(r.fds);
  if (r.n <= 0) {
    CloseAll(p.fds);
    p.closed = true;
    return p;
  }
  p.text = std::move(r.text);
  p.invalid = r.truncated;
  return p;
}

// False when the peer is gone.
bool Send(int conn, const std::string& text, int fd = -1) {
  std::vector<int> fds;
  if (fd >= 0) fds.push_back(fd);
  return scm::Send(conn, text, fds) == static_cast<ssize_t>(text.size());
}

// A name is one printable word: it travels in a text packet and shows in the log.
bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > kMaxName) return false;
  for (unsigned char c : name)
    if (c <= ' ' || c >= 0x7f) return false;
  return true;
}

class Holder {
 public:
  explicit Holder(int listener) : listener_(listener), started_(Clock::now()) {}

  [[noreturn]] void Run() {
    for (;;) {
      if (kept_.empty() && active_ < 0 && pending_.empty()) {
        if (served_) Exit("no fd kept and no client");
        if (Clock::now() - started_ >= kFirstClientWait) Exit("no client came");
      }
      std::vector<struct pollfd> fds;
      fds.push_back({listener_, POLLIN, 0});
      if (active_ >= 0) fds.push_back({active_, POLLIN, 0});
      for (const auto& p : pending_) fds.push_back({p.fd, POLLIN, 0});
      int n = poll(fds.data(), fds.size(), static_cast<int>(WaitMs()));
      if (n < 0) {
        if (errno == EINTR) continue;
        Log("poll: %s", strerror(errno));
        Exit("poll failed");
      }
      DropLatePending();
      for (const auto& p : fds) {
        if (!p.revents) continue;
        if (p.fd == listener_) Accept();
        else if (p.fd == active_) ServeActive();
        else ServePending(p.fd);
      }
    }
  }

 private:
  struct Pending {
    int fd;
    uid_t uid;
    pid_t pid;
    Clock::time_point deadline;
  };

  long WaitMs() const {
    auto until = Clock::time_point::max();
    for (const auto& p : pending_) until = std::min(until, p.deadline);
    if (!served_) until = std::min(until, started_ + kFirstClientWait);
    if (until == Clock::time_point::max()) return -1;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    return ms < 0 ? 0 : ms + 1;
  }

  void Accept() {
    int conn = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) Log("accept: %s", strerror(errno));
      return;
    }
    struct ucred cred = {};
    socklen_t len = sizeof cred;
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      Log("refused a client: SO_PEERCRED: %s", strerror(errno));
      close(conn);
      return;
    }
    if (cred.uid != getuid()) {
      Log("refused client pid %d: uid %u is not the holder's uid %u", cred.pid, cred.uid, getuid());
      Send(conn, "ERR uid " + std::to_string(cred.uid) + " is not the holder's uid " + std::to_string(getuid()));
      close(conn);
      return;
    }
    if (pending_.size() >= kMaxPending) {
      Log("refused client pid %d: too many connections waiting for HELLO", cred.pid);
      Send(conn, "ERR too many connections waiting for HELLO");
      close(conn);
      return;
    }
    pending_.push_back({conn, cred.uid, cred.pid, Clock::now() + kHelloWait});
  }

  void DropLatePending() {
    auto now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      Log("refused client pid %d: no HELLO in time", it->pid);
      Send(it->fd, "ERR no HELLO in time");
      close(it->fd);
      it = pending_.erase(it);
    }
  }

  void ServePending(int fd) {
    auto it = pending_.begin();
    while (it != pending_.end() && it->fd != fd) ++it;
    if (it == pending_.end()) return;  // dropped as late in this round
    Packet p = Receive(fd);
    if (p.none) return;
    Pending client = *it;
    pending_.erase(it);
    if (p.closed) {
      close(fd);
      return;
    }
    std::string refusal = CheckHello(p);
    CloseAll(p.fds);
    if (!refusal.empty()) {
      Log("refused client pid %d: %s", client.pid, refusal.c_str());
      Send(fd, "ERR " + refusal);
      close(fd);
      return;
    }
    if (active_ >= 0) {
      Log("client pid %d replaced by pid %d, which holds the lock now", active_pid_, client.pid);
      close(active_);
    }
    active_ = fd;
    active_pid_ = client.pid;
    served_ = true;
    Log("client pid %d holds the lock: serving it (%zu fds kept)", client.pid, kept_.size());
    if (!Send(fd, "OK pid " + std::to_string(getpid()))) Disconnect();
  }

  // Empty when the HELLO proves the lock; else why not.
  std::string CheckHello(const Packet& p) const {
    if (p.invalid) return "truncated packet";
    if (p.text != "HELLO") return "the first request must be HELLO";
    if (p.fds.size() != 1) return "HELLO needs exactly one fd, the client's fd of " + g_lockfile;
    struct stat lock, got;
    if (lstat(g_lockfile.c_str(), &lock) != 0) return g_lockfile + ": " + strerror(errno);
    if (fstat(p.fds[0], &got) != 0) return std::string("fstat of the HELLO fd: ") + strerror(errno);
    if (got.st_dev != lock.st_dev || got.st_ino != lock.st_ino) return "the HELLO fd is not " + g_lockfile;
    if (flock(p.fds[0], LOCK_EX | LOCK_NB) != 0)
      return errno == EWOULDBLOCK ? "the lock on " + g_lockfile + " is held by another open of it"
                                  : std::string("flock: ") + strerror(errno);
    return "";
  }

  void Disconnect() {
    Log("client pid %d gone (%zu fds kept)", active_pid_, kept_.size());
    close(active_);
    active_ = -1;
    active_pid_ = 0;
  }

  void ServeActive() {
    Packet p = Receive(active_);
    if (p.none) return;
    if (p.closed) {
      Disconnect();
      return;
    }
    std::string reply = p.invalid ? "ERR truncated packet" : Handle(p);
    CloseAll(p.fds);  // those not kept
    if (!reply.empty() && !Send(active_, reply)) Disconnect();
  }

  // The reply; empty when the request already answered (LIST).
  std::string Handle(Packet& p) {
    const std::string& text = p.text;
    size_t space = text.find(' ');
    std::string verb = text.substr(0, space);
    std::string name = space == std::string::npos ? "" : text.substr(space + 1);
    bool takesName = verb == "KEEP" || verb == "DROP";
    if (takesName && !ValidName(name)) return "ERR invalid name (one printable word, at most 255 bytes)";
    if (!takesName && space != std::string::npos) return "ERR " + verb + " takes no argument";
    if (verb == "KEEP") {
      if (p.fds.size() != 1) return "ERR KEEP needs exactly one fd";
      auto old = kept_.find(name);
      if (old == kept_.end() && kept_.size() >= kMaxKept) return "ERR too many fds kept";
      if (old != kept_.end()) close(old->second);
      kept_[name] = p.fds[0];
      p.fds.clear();
      Log("keeping %s%s (%zu fds kept)", name.c_str(), old != kept_.end() ? ", replacing the copy before" : "",
          kept_.size());
      return "OK";
    }
    if (verb == "DROP") {
      auto it = kept_.find(name);
      if (it == kept_.end()) return "ERR nothing kept as " + name;
      close(it->second);
      kept_.erase(it);
      Log("dropped %s (%zu fds kept)", name.c_str(), kept_.size());
      return "OK";
    }
    if (verb == "LIST") {
      for (const auto& [kname, fd] : kept_)
        if (!Send(active_, "FD " + kname, fd)) return "";
      Log("handed %zu fds to client pid %d", kept_.size(), active_pid_);
      return "END";
    }
    if (verb == "EXIT") {
      Send(active_, "OK");
      Exit("asked to exit");
    }
    if (verb == "HELLO") return "ERR already accepted";
    return "ERR unknown request " + verb.substr(0, 32);
  }

  [[noreturn]] void Exit(const char* why) {
    for (auto& [name, fd] : kept_) close(fd);
    size_t count = kept_.size();
    kept_.clear();
    unlink(g_socket.c_str());
    Log("exiting: %s (%zu fds closed)", why, count);
    exit(0);
  }

  int listener_;
  Clock::time_point started_;
  bool served_ = false;
  int active_ = -1;
  pid_t active_pid_ = 0;
  std::vector<Pending> pending_;
  std::map<std::string, int> kept_;
};

// 0: listening on SOCKET; otherwise the exit status, after a log line.
int Listen(int* out) {
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (g_socket.size() >= sizeof addr.sun_path) {
    Log("socket path too long: %s", g_socket.c_str());
    return 2;
  }
  memcpy(addr.sun_path, g_socket.data(), g_socket.size());
  int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (probe < 0) {
    Log("socket: %s", strerror(errno));
    return 1;
  }
  if (connect(probe, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) == 0) {
    close(probe);
    Log("another holder answers on %s: not starting", g_socket.c_str());
    return 3;
  }
  int err = errno;
  close(probe);
  if (err == ECONNREFUSED) {
    struct stat st;
    if (lstat(g_socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && unlink(g_socket.c_str()) == 0)
      Log("removed the stale socket %s", g_socket.c_str());
  } else if (err != ENOENT) {
    Log("cannot check %s: %s", g_socket.c_str(), strerror(err));
    return 1;
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    Log("socket: %s", strerror(errno));
    return 1;
  }
  mode_t old = umask(0077);
  int bound = bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  err = errno;
  umask(old);
  if (bound != 0) {
    Log("bind %s: %s", g_socket.c_str(), strerror(err));
    return 1;
  }
  if (chmod(g_socket.c_str(), 0600) != 0 || listen(fd, static_cast<int>(kMaxPending)) != 0) {
    Log("listen on %s: %s", g_socket.c_str(), strerror(errno));
    unlink(g_socket.c_str());
    return 1;
  }
  *out = fd;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || argv[1][0] != '/' || argv[2][0] != '/') {
    fprintf(stderr, "usage: %s SOCKET LOCKFILE (absolute paths)\n", argv[0]);
    return 2;
  }
  g_socket = argv[1];
  g_lockfile = argv[2];
  // Nothing inherited may stay open here: a copy of the daemon's lock fd would hold its lock forever.
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
    for (int fd = 3; fd < 1024; fd++) close(fd);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  int listener = -1;
  if (int status = Listen(&listener)) return status;
  pid_t child = fork();
  if (child < 0) {
    Log("fork: %s", strerror(errno));
    unlink(g_socket.c_str());
    return 1;
  }
  if (child > 0) _exit(0);  // the socket already takes connections: the caller may connect now
  setsid();
  if (chdir("/") != 0) Log("chdir /: %s", strerror(errno));
  Log("serving %s for the holder of %s", g_socket.c_str(), g_lockfile.c_str());
  Holder(listener).Run();
}
