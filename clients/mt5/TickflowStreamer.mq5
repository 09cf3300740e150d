//+------------------------------------------------------------------+
//| TickflowStreamer.mq5                                             |
//| Streams every tick of the chosen symbols to tickflow's ingest    |
//| over TCP as newline-delimited JSON (see crates/ingest/src/mt5.rs)|
//+------------------------------------------------------------------+
#property copyright "tickflow"
#property version   "1.00"
#property strict

input string InpHost          = "127.0.0.1";   // ingest host (allow-list it: Tools > Options > Expert Advisors)
input int    InpPort          = 5555;          // ingest --mt5-listen port
input string InpToken         = "";            // ingest --mt5-token
input string InpTerminal      = "";            // terminal name in the source (default: account server + login)
input string InpSymbols       = "";            // comma-separated symbols (default: the chart's symbol)
input int    InpHeartbeatSec  = 1;             // heartbeat interval
input int    InpResendWindowMs = 5000;         // resend this much before the last acknowledged tick
input bool   InpTls           = false;         // TLS (ingest --mt5-tls-cert/--mt5-tls-key); InpHost must match the certificate

string   g_symbols[];
long     g_last_msc[];      // per symbol: time_msc of the newest tick sent
long     g_start_msc[];     // per symbol: where streaming started (the resend point before any ack)
int      g_sent_at_last[];  // per symbol: ticks already sent with that time_msc
long     g_acked_msc = 0;   // newest tick ingest acknowledged as durable
int      g_socket = INVALID_HANDLE;
datetime g_last_beat = 0;
string   g_inbox = "";

//+------------------------------------------------------------------+
int OnInit()
  {
   string list = InpSymbols == "" ? _Symbol : InpSymbols;
   int n = StringSplit(list, ',', g_symbols);
   if(n <= 0)
      return(INIT_PARAMETERS_INCORRECT);
   ArrayResize(g_last_msc, n);
   ArrayResize(g_start_msc, n);
   ArrayResize(g_sent_at_last, n);
   for(int i = 0; i < n; i++)
     {
      StringTrimLeft(g_symbols[i]);
      StringTrimRight(g_symbols[i]);
      SymbolSelect(g_symbols[i], true);
      g_last_msc[i] = (long)TimeTradeServer() * 1000;
      g_start_msc[i] = g_last_msc[i];
      g_sent_at_last[i] = 0;
     }
   EventSetMillisecondTimer(50);
   return(INIT_SUCCEEDED);
  }

//+------------------------------------------------------------------+
void OnDeinit(const int reason)
  {
   EventKillTimer();
   if(g_socket != INVALID_HANDLE)
      SocketClose(g_socket);
  }

//+------------------------------------------------------------------+
bool SendLine(const string line)
  {
   uchar buf[];
   int len = StringToCharArray(line + "\n", buf, 0, WHOLE_ARRAY, CP_UTF8) - 1;
   int sent = InpTls ? SocketTlsSend(g_socket, buf, len) : SocketSend(g_socket, buf, len);
   if(sent != len)
     {
      Print("tickflow: send failed, reconnecting: ", GetLastError());
      SocketClose(g_socket);
      g_socket = INVALID_HANDLE;
      return(false);
     }
   return(true);
  }

//+------------------------------------------------------------------+
string TerminalName()
  {
   if(InpTerminal != "")
      return(InpTerminal);
   return(AccountInfoString(ACCOUNT_SERVER) + "-" + IntegerToString(AccountInfoInteger(ACCOUNT_LOGIN)));
  }

//+------------------------------------------------------------------+
bool Connect()
  {
   g_socket = SocketCreate();
   if(g_socket == INVALID_HANDLE)
      return(false);
   if(!SocketConnect(g_socket, InpHost, InpPort, 3000))
     {
      SocketClose(g_socket);
      g_socket = INVALID_HANDLE;
      return(false);
     }
   // TLS: the terminal checks ingest's certificate against the Windows certificate store and
   // InpHost; the token then never crosses the network in clear.
   if(InpTls && !SocketTlsHandshake(g_socket, InpHost))
     {
      Print("tickflow: TLS handshake failed: ", GetLastError());
      SocketClose(g_socket);
      g_socket = INVALID_HANDLE;
      return(false);
     }
   // Broker server time is not UTC: tell ingest the offset.
   long offset = (long)(TimeTradeServer() - TimeGMT());
   string hello = StringFormat("{\"type\":\"hello\",\"token\":\"%s\",\"terminal\":\"%s\",\"utc_offset_s\":%I64d}",
                               InpToken, TerminalName(), offset);
   if(!SendLine(hello))
      return(false);
   // Resend from just before the last acknowledged tick (from the start when nothing was
   // acknowledged yet): the idempotency key drops the overlap.
   for(int i = 0; i < ArraySize(g_symbols); i++)
     {
      g_last_msc[i] = g_acked_msc > 0 ? g_acked_msc - InpResendWindowMs : g_start_msc[i];
      g_sent_at_last[i] = 0;
     }
   g_inbox = "";
   Print("tickflow: connected to ", InpHost, ":", InpPort);
   return(true);
  }

//+------------------------------------------------------------------+
string Num(const double v, const int digits)
  {
   return(DoubleToString(v, digits));
  }

//+------------------------------------------------------------------+
void SendNewTicks(const int i)
  {
   MqlTick ticks[];
   int digits = (int)SymbolInfoInteger(g_symbols[i], SYMBOL_DIGITS);
   int got = CopyTicksRange(g_symbols[i], ticks, COPY_TICKS_ALL, (ulong)g_last_msc[i], 0);
   if(got <= 0)
      return;
   int skip = g_sent_at_last[i];
   for(int k = 0; k < got; k++)
     {
      // Ticks of the newest millisecond already sent come back first: skip them.
      if(ticks[k].time_msc == g_last_msc[i] && skip > 0)
        {
         skip--;
         continue;
        }
      string line = StringFormat("{\"type\":\"tick\",\"symbol\":\"%s\",\"time_msc\":%I64d,\"bid\":%s,\"ask\":%s,\"last\":%s,\"volume\":%I64u,\"volume_real\":%s,\"flags\":%u}",
                                 g_symbols[i], ticks[k].time_msc, Num(ticks[k].bid, digits), Num(ticks[k].ask, digits),
                                 Num(ticks[k].last, digits), ticks[k].volume, DoubleToString(ticks[k].volume_real, 8), ticks[k].flags);
      if(!SendLine(line))
         return;
      if(ticks[k].time_msc == g_last_msc[i])
         g_sent_at_last[i]++;
      else
        {
         g_last_msc[i] = ticks[k].time_msc;
         g_sent_at_last[i] = 1;
        }
     }
  }

//+------------------------------------------------------------------+
void ReadReplies()
  {
   uchar buf[];
   int n = 0;
   if(InpTls)
      n = SocketTlsReadAvailable(g_socket, buf, 65536);
   else
     {
      uint avail = SocketIsReadable(g_socket);
      if(avail == 0)
         return;
      n = SocketRead(g_socket, buf, avail, 100);
     }
   if(n <= 0)
      return;
   g_inbox += CharArrayToString(buf, 0, n, CP_UTF8);
   int nl;
   while((nl = StringFind(g_inbox, "\n")) >= 0)
     {
      string line = StringSubstr(g_inbox, 0, nl);
      g_inbox = StringSubstr(g_inbox, nl + 1);
      int at = StringFind(line, "\"time_msc\":");
      if(StringFind(line, "\"ack\"") >= 0 && at >= 0)
         g_acked_msc = StringToInteger(StringSubstr(line, at + 11));
      else
         if(StringFind(line, "\"error\"") >= 0)
           {
            Print("tickflow: ingest refused: ", line);
            SocketClose(g_socket);
            g_socket = INVALID_HANDLE;
            return;
           }
     }
  }

//+------------------------------------------------------------------+
void OnTimer()
  {
   if(g_socket == INVALID_HANDLE || !SocketIsConnected(g_socket))
     {
      if(g_socket != INVALID_HANDLE)
         SocketClose(g_socket);
      g_socket = INVALID_HANDLE;
      if(!Connect())
         return;
     }
   for(int i = 0; i < ArraySize(g_symbols) && g_socket != INVALID_HANDLE; i++)
      SendNewTicks(i);
   if(g_socket == INVALID_HANDLE)
      return;
   if(TimeLocal() - g_last_beat >= InpHeartbeatSec)
     {
      g_last_beat = TimeLocal();
      SendLine("{\"type\":\"hb\"}");
     }
   if(g_socket != INVALID_HANDLE)
      ReadReplies();
  }
//+------------------------------------------------------------------+
