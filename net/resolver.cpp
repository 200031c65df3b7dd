#include "net/resolver.hpp"

#include <netdb.h>
#include <uv.h>

#include <cstring>
#include <thread>

namespace tcpfault {

void Resolver::Ticket::cancel() {
    std::lock_guard<std::mutex> lock(mu);
    done = nullptr;
}

Resolver& Resolver::instance() {
    // Deliberately never destroyed: a thread may still be blocked in getaddrinfo at exit.
    static Resolver* r = new Resolver();
    return *r;
}

// Posts the answer to the waiter's loop. The ticket's lock is held while posting, so once
// cancel() has returned nothing more is posted for it (its loop may then go away).
void Resolver::deliver(const std::shared_ptr<Ticket>& t, const Result& r) {
    std::lock_guard<std::mutex> lock(t->mu);
    if (!t->done) return;
    t->queue->post([t, r] {
        Done d;
        {
            std::lock_guard<std::mutex> l(t->mu);
            d = std::move(t->done);
        }
        if (d) d(r);
    });
}

std::shared_ptr<Resolver::Ticket> Resolver::resolve(const std::string& host, uint16_t port,
                                                    LoopQueue& queue, Done done) {
    auto t = std::make_shared<Ticket>();
    t->done = std::move(done);
    t->queue = &queue;
    Key key{host, port};
    std::unique_lock<std::mutex> lock(mu_);
    auto now = std::chrono::steady_clock::now();
    // Forget answers nobody can use any more (a name per proxy: the map stays small).
    std::erase_if(lookups_, [&](const auto& kv) {
        const Lookup& l = kv.second;
        return !l.running && (!l.has_answer || now - l.answered >= kCacheTtl);
    });
    Lookup& l = lookups_[key];
    if (!l.running && l.has_answer) {
        Result cached = l.answer;
        lock.unlock();
        deliver(t, cached);
        return t;
    }
    l.waiters.push_back(t);
    if (!l.running) {
        l.running = true;
        l.host = host;
        l.port = port;
        pending_.push_back(key);
        if (idle_ == 0 && threads_ < kMaxThreads) {
            ++threads_;
            std::thread([this] { worker(); }).detach();
        }
        cv_.notify_one();
    }
    return t;
}

void Resolver::worker() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        ++idle_;
        cv_.wait(lock, [&] { return !pending_.empty(); });
        --idle_;
        Key key = pending_.front();
        pending_.pop_front();
        lock.unlock();

        Result r;
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        addrinfo* res = nullptr;
        int rc = getaddrinfo(key.first.c_str(), std::to_string(key.second).c_str(), &hints, &res);
        if (rc != 0) {
            r.status = uv_translate_sys_error(rc == EAI_SYSTEM ? errno : 0);
            // libuv's mapping of resolver errors, as uv_getaddrinfo reports them.
            switch (rc) {
                case EAI_NONAME:
                    r.status = UV_EAI_NONAME;
                    break;
                case EAI_AGAIN:
                    r.status = UV_EAI_AGAIN;
                    break;
                case EAI_FAIL:
                    r.status = UV_EAI_FAIL;
                    break;
                case EAI_NODATA:
                    r.status = UV_EAI_NODATA;
                    break;
                default:
                    if (r.status == 0) r.status = UV_EAI_FAIL;
            }
        } else {
            for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
                sockaddr_storage ss{};
                std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
                r.addrs.push_back(ss);
            }
            freeaddrinfo(res);
            if (r.addrs.empty()) r.status = UV_EAI_NODATA;
        }

        lock.lock();
        Lookup& l = lookups_[key];
        l.running = false;
        l.has_answer = true;
        l.answered = std::chrono::steady_clock::now();
        l.answer = r;
        std::vector<std::shared_ptr<Ticket>> waiters = std::move(l.waiters);
        l.waiters.clear();
        lock.unlock();
        for (const auto& w : waiters) deliver(w, r);
        lock.lock();
    }
}

}  // namespace tcpfault
